//! Canonical JSON written straight from a `Serialize` value, without the
//! `serde_json::Value` tree in between: the same bytes as
//! `canonical(&serde_json::to_value(x)?)` (unit and property tests hold the two equal),
//! at a fraction of the cost. `to_value` allocated a `String` per key and a `BTreeMap`
//! node per member for every event, only to be walked once and dropped.
//!
//! Members are written in the order they are serialised; an object is reordered (through
//! one copy) only when its keys are not already sorted, and a repeated key keeps its last
//! value, as `to_value`'s map does. Scalars are written by `serde_json` itself, as they
//! would be from a `Value` (an `f32` as the `f64` `to_value` widens it to).
use std::{borrow::Cow, fmt::Display};

use serde::{
    Serialize,
    ser::{self, Impossible},
};

/// Why a value has no canonical form: what `to_value` refuses too (a map key that is not
/// a string or a number, a custom error from a `Serialize` impl).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl ser::Error for Error {
    fn custom<T: Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// One member written into the output: its key, and the span of `"key":value`.
#[derive(Debug, Clone)]
pub struct Member {
    pub key: Cow<'static, str>,
    pub start: usize,
    pub end: usize,
}

/// `value` in canonical JSON appended to `out`. For an object, returns its members in
/// canonical order, their spans in `out` (a caller splits the text without parsing it).
pub fn write<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<Vec<Member>, Error> {
    let mut top = Vec::new();
    value.serialize(Writer {
        out,
        members: Some(&mut top),
    })?;
    Ok(top)
}

thread_local! {
    /// The members of an object being reordered (a copy: they move within the output).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    /// Where the members of the object this writer writes go, when the caller wants them.
    members: Option<&'a mut Vec<Member>>,
}

fn scalar<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<(), Error> {
    serde_json::to_writer(out, v).map_err(|e| Error(e.to_string()))
}

impl<'a> Writer<'a> {
    fn nested(out: &'a mut Vec<u8>) -> Self {
        Self { out, members: None }
    }

    fn object(self) -> Object<'a> {
        self.out.push(b'{');
        let start = self.out.len();
        Object {
            out: self.out,
            start,
            members: Vec::new(),
            key: None,
            report: self.members,
        }
    }

    /// `{"variant":` … `}`: how `to_value` writes a variant with data.
    fn open_variant(out: &mut Vec<u8>, variant: &str) -> Result<(), Error> {
        out.push(b'{');
        scalar(out, variant)?;
        out.push(b':');
        Ok(())
    }
}

/// An object being written: its members in serialisation order, sorted at the end.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    /// Just after the `{`.
    start: usize,
    members: Vec<Member>,
    /// The key `serialize_key` gave, until its value comes.
    key: Option<String>,
    report: Option<&'a mut Vec<Member>>,
}

impl<'a> Object<'a> {
    fn member<T: Serialize + ?Sized>(
        &mut self,
        key: Cow<'static, str>,
        value: &T,
    ) -> Result<(), Error> {
        if !self.members.is_empty() {
            self.out.push(b',');
        }
        let start = self.out.len();
        scalar(self.out, key.as_ref())?;
        self.out.push(b':');
        value.serialize(Writer::nested(self.out))?;
        let end = self.out.len();
        self.members.push(Member { key, start, end });
        Ok(())
    }

    /// Closes the object; gives the output back (a struct variant closes one more `}`).
    fn finish(self) -> &'a mut Vec<u8> {
        let Self {
            out,
            start,
            mut members,
            key: _,
            report,
        } = self;
        let in_order = members.windows(2).all(|w| w[0].key < w[1].key);
        if !in_order {
            // Stable: of equal keys the last serialised comes last, and is kept.
            members.sort_by(|a, b| a.key.cmp(&b.key));
            members.dedup_by(|later, kept| {
                let same = later.key == kept.key;
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
            SCRATCH.with_borrow_mut(|written| {
                written.clear();
                written.extend_from_slice(&out[start..]);
                out.truncate(start);
                for (i, m) in members.iter_mut().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let at = out.len();
                    out.extend_from_slice(&written[m.start - start..m.end - start]);
                    (m.start, m.end) = (at, out.len());
                }
            });
        }
        out.push(b'}');
        if let Some(report) = report {
            *report = members;
        }
        out
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.member(Cow::Borrowed(key), value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(key.serialize(KeyWriter)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error("a map value without its key".to_owned()))?;
        self.member(Cow::Owned(key), value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish();
        Ok(())
    }
}

/// A struct variant: `{"variant":{..}}`.
struct VariantObject<'a>(Object<'a>);

impl ser::SerializeStructVariant for VariantObject<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.0.member(Cow::Borrowed(key), value)
    }

    fn end(self) -> Result<(), Error> {
        let Self(object) = self;
        object.finish().push(b'}');
        Ok(())
    }
}

/// An array (`seq`, tuple, tuple struct); `close` adds what a tuple variant needs.
struct Array<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// `}` to close after `]` (a tuple variant).
    variant: bool,
}

impl Array<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Writer::nested(self.out))
    }

    fn close(self) {
        self.out.push(b']');
        if self.variant {
            self.out.push(b'}');
        }
    }
}

macro_rules! array_impl {
    ($trait:ident, $method:ident) => {
        impl ser::$trait for Array<'_> {
            type Ok = ();
            type Error = Error;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }

            fn end(self) -> Result<(), Error> {
                self.close();
                Ok(())
            }
        }
    };
}
array_impl!(SerializeSeq, serialize_element);
array_impl!(SerializeTuple, serialize_element);
array_impl!(SerializeTupleStruct, serialize_field);
array_impl!(SerializeTupleVariant, serialize_field);

/// Scalars `serde_json` writes as they would be written from a `Value`.
macro_rules! scalars {
    ($($method:ident: $ty:ty,)*) => {
        $(
            fn $method(self, v: $ty) -> Result<(), Error> {
                scalar(self.out, &v)
            }
        )*
    };
}

/// Map keys written as their `Display` (as `to_value` does).
macro_rules! key_scalars {
    ($($method:ident: $ty:ty,)*) => {
        $(
            fn $method(self, v: $ty) -> Result<String, Error> {
                Ok(v.to_string())
            }
        )*
    };
}

impl<'a> ser::Serializer for Writer<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = VariantObject<'a>;

    scalars! {
        serialize_bool: bool,
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
    }

    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        // `to_value` takes what fits a u64 or an i64, and refuses the rest.
        if let Ok(v) = i64::try_from(v) {
            scalar(self.out, &v)
        } else if let Ok(v) = u64::try_from(v) {
            scalar(self.out, &v)
        } else {
            Err(Error("number out of range".to_owned()))
        }
    }

    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        u64::try_from(v)
            .map_err(|_| Error("number out of range".to_owned()))
            .and_then(|v| scalar(self.out, &v))
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        // `to_value` keeps an f32 as the f64 it widens to.
        scalar(self.out, &f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        scalar(self.out, &v)
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        scalar(self.out, &v)
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        scalar(self.out, v)
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        // `to_value` makes bytes an array of numbers.
        scalar(self.out, &v.iter().collect::<Vec<_>>())
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        self.serialize_none()
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_none()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        scalar(self.out, variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        Writer::open_variant(self.out, variant)?;
        value.serialize(Writer::nested(self.out))?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Array<'a>, Error> {
        self.out.push(b'[');
        Ok(Array {
            out: self.out,
            first: true,
            variant: false,
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Array<'a>, Error> {
        Writer::open_variant(self.out, variant)?;
        self.out.push(b'[');
        Ok(Array {
            out: self.out,
            first: true,
            variant: true,
        })
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, Error> {
        Ok(self.object())
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Object<'a>, Error> {
        Ok(self.object())
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<VariantObject<'a>, Error> {
        Writer::open_variant(self.out, variant)?;
        Ok(VariantObject(Writer::nested(self.out).object()))
    }
}

/// A map key as `to_value` takes it: a string, or a number, bool or unit variant written
/// as one; anything else is refused.
struct KeyWriter;

fn refused() -> Error {
    Error("key must be a string".to_owned())
}

impl ser::Serializer for KeyWriter {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = Impossible<String, Error>;
    type SerializeTuple = Impossible<String, Error>;
    type SerializeTupleStruct = Impossible<String, Error>;
    type SerializeTupleVariant = Impossible<String, Error>;
    type SerializeMap = Impossible<String, Error>;
    type SerializeStruct = Impossible<String, Error>;
    type SerializeStructVariant = Impossible<String, Error>;

    key_scalars! {
        serialize_bool: bool,
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128,
        serialize_char: char,
    }

    fn serialize_f32(self, _v: f32) -> Result<String, Error> {
        // Rare enough to leave to the `Value` path (the caller falls back to it).
        Err(refused())
    }

    fn serialize_f64(self, _v: f64) -> Result<String, Error> {
        Err(refused())
    }

    fn serialize_str(self, v: &str) -> Result<String, Error> {
        Ok(v.to_owned())
    }

    fn serialize_bytes(self, _v: &[u8]) -> Result<String, Error> {
        Err(refused())
    }

    fn serialize_none(self) -> Result<String, Error> {
        Err(refused())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<String, Error> {
        Err(refused())
    }

    fn serialize_unit(self) -> Result<String, Error> {
        Err(refused())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, Error> {
        Err(refused())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, Error> {
        Ok(variant.to_owned())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, Error> {
        Err(refused())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(refused())
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Err(refused())
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(refused())
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(refused())
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(refused())
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        Err(refused())
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(refused())
    }
}
