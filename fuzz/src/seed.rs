//! Writing seed inputs for the structured targets: the bytes that `arbitrary` decodes into a
//! given input. Each target implements [`Encode`] for its input types field by field, in
//! declaration order, mirroring `arbitrary`'s derive (integers little-endian, `bool` one byte,
//! enum variants as a `u32` scaled onto the variant count, `Option` a bool then the value,
//! `Vec` a `true` byte before each element and a `false` byte after the last). [`encode`]
//! decodes what it wrote and refuses a seed that does not come back equal, so a change in
//! `arbitrary`'s format cannot silently turn the checked-in seeds into noise.

use arbitrary::{Arbitrary, Unstructured};

#[derive(Default)]
pub struct Encoder(pub Vec<u8>);

pub trait Encode {
    fn encode(&self, e: &mut Encoder);
}

impl Encoder {
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    /// Variant `index` of an enum with `count` variants: the smallest `u32` that `arbitrary`'s
    /// derive maps to it (`(u64::from(x) * count) >> 32`).
    pub fn variant(&mut self, index: u32, count: u32) {
        let x = ((u64::from(index) << 32).div_ceil(u64::from(count))) as u32;
        x.encode(self);
    }

    pub fn option<T: Encode>(&mut self, v: &Option<T>) {
        v.is_some().encode(self);
        if let Some(v) = v {
            v.encode(self);
        }
    }

    pub fn vec<T: Encode>(&mut self, v: &[T]) {
        for x in v {
            true.encode(self);
            x.encode(self);
        }
        false.encode(self);
    }
}

macro_rules! ints {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, e: &mut Encoder) {
                e.bytes(&self.to_le_bytes());
            }
        }
    )*};
}
ints!(u8, u16, u32, u64, i8, i16, i32, i64);

impl Encode for bool {
    fn encode(&self, e: &mut Encoder) {
        e.bytes(&[u8::from(*self)]);
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, e: &mut Encoder) {
        e.option(self);
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, e: &mut Encoder) {
        e.vec(self);
    }
}

impl<A: Encode, B: Encode> Encode for (A, B) {
    fn encode(&self, e: &mut Encoder) {
        self.0.encode(e);
        self.1.encode(e);
    }
}

impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode(&self, e: &mut Encoder) {
        for x in self {
            x.encode(e);
        }
    }
}

/// The bytes of `input`, checked by decoding them again.
pub fn encode<T>(input: &T) -> Vec<u8>
where
    T: Encode + for<'a> Arbitrary<'a> + PartialEq + std::fmt::Debug,
{
    let mut e = Encoder::default();
    input.encode(&mut e);
    let decoded = T::arbitrary(&mut Unstructured::new(&e.0)).expect("seed decodes");
    assert_eq!(&decoded, input, "the seed's bytes decode to something else");
    e.0
}

/// Decodes a target's input the way the targets do (`arbitrary`, not `arbitrary_take_rest`,
/// so that the format is position independent and [`encode`] can write it).
pub fn decode<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary(&mut Unstructured::new(data)).ok()
}
