//! Pass rates broken down by object size and by shape word, for generated images, VAE round
//! trips, images scored from elsewhere and captions: where a model's failures concentrate.
//!
//! Image-level tallies count an image once in every bucket its expected objects fall in (a
//! prompt "a purple triangle and a red diamond" counts under `triangle` and under `diamond`),
//! so bucket totals may add up to more than the number of images. Size buckets are the size
//! the prompt names (`small`, `large`; the checker splits them at 17 px), `unspecified` for an
//! object without a size word. Object-level tallies count every expected object once: it is
//! found when a detection has its shape, and its colour and size where the prompt names them
//! (positions and relations are not looked at). `detected_shapes` counts what the checker saw:
//! every detection's shape word, `unknown` when no template fits (a blob).

use std::collections::{BTreeMap, BTreeSet};

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::checker::Detection;
use super::score::{Expectation, ObjectSpec};
use crate::shapes::spec::Shape;

/// Size bucket of an object without a size word.
pub const UNSPECIFIED: &str = "unspecified";

/// Shape key of a detection no template fits.
pub const UNKNOWN_SHAPE: &str = "unknown";

/// Passes out of a total; serialised as `{"pass", "total", "accuracy"}` (accuracy `null` when
/// the total is 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub pass: usize,
    pub total: usize,
}

impl Tally {
    /// Counts one verdict.
    pub fn add(&mut self, pass: bool) {
        self.pass += usize::from(pass);
        self.total += 1;
    }

    /// `pass / total`, if anything was counted.
    pub fn accuracy(&self) -> Option<f64> {
        (self.total > 0).then(|| self.pass as f64 / self.total as f64)
    }

    /// A tally of the verdicts in `verdicts`.
    pub fn of(verdicts: impl IntoIterator<Item = bool>) -> Tally {
        let mut t = Tally::default();
        verdicts.into_iter().for_each(|v| t.add(v));
        t
    }

    /// `"  3/10   0.300"`, or `"  0/0        -"`.
    pub fn text(&self) -> String {
        match self.accuracy() {
            Some(a) => format!("{:>4}/{:<4} {:>6.3}", self.pass, self.total, a),
            None => format!("{:>4}/{:<4} {:>6}", self.pass, self.total, "-"),
        }
    }
}

impl Serialize for Tally {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Tally", 3)?;
        s.serialize_field("pass", &self.pass)?;
        s.serialize_field("total", &self.total)?;
        s.serialize_field("accuracy", &self.accuracy())?;
        s.end()
    }
}

/// Adds `pass` to the tally of `key` in `map`.
pub fn count(map: &mut BTreeMap<String, Tally>, key: &str, pass: bool) {
    map.entry(key.to_string()).or_default().add(pass);
}

/// The size bucket of an expected object.
pub fn size_key(spec: &ObjectSpec) -> &'static str {
    spec.size.map_or(UNSPECIFIED, |s| s.word())
}

/// The distinct size buckets of an expectation's objects.
pub fn size_keys(expect: &Expectation) -> BTreeSet<&'static str> {
    expect.objects.iter().map(size_key).collect()
}

/// The distinct shape words of an expectation's objects.
pub fn shape_keys(expect: &Expectation) -> BTreeSet<&'static str> {
    expect.objects.iter().map(|o| o.shape.word()).collect()
}

/// The distinct shape words of `shapes`.
pub fn shape_words(shapes: &[Shape]) -> BTreeSet<&'static str> {
    shapes.iter().map(|s| s.word()).collect()
}

/// Whether each expected object is found among `detections` (see the module documentation):
/// of `m` identical objects (after dropping the position), as many are found as there are
/// matching detections, at most `m`.
pub fn objects_found(expect: &Expectation, detections: &[Detection]) -> Vec<bool> {
    let plain = |o: &ObjectSpec| ObjectSpec {
        position: None,
        ..*o
    };
    expect
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let spec = plain(o);
            let rank = expect
                .objects
                .iter()
                .take(i)
                .filter(|p| plain(p) == spec)
                .count();
            detections.iter().filter(|d| spec.matches(d)).count() > rank
        })
        .collect()
}

/// Image-level and object-level pass rates by size and by shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Breakdown {
    /// Images passing, per size bucket of their expected objects.
    pub by_size: BTreeMap<String, Tally>,
    /// Images passing, per shape word of their expected objects.
    pub by_shape: BTreeMap<String, Tally>,
    /// Expected objects found, per size bucket.
    pub objects_by_size: BTreeMap<String, Tally>,
    /// Expected objects found, per shape word.
    pub objects_by_shape: BTreeMap<String, Tally>,
    /// Detections of every counted image, per detected shape word ([`UNKNOWN_SHAPE`]: none).
    pub detected_shapes: BTreeMap<String, usize>,
}

impl Breakdown {
    /// Counts one image: its expectation, what the checker found and the verdict.
    pub fn add(&mut self, expect: &Expectation, detections: &[Detection], pass: bool) {
        for key in size_keys(expect) {
            count(&mut self.by_size, key, pass);
        }
        for key in shape_keys(expect) {
            count(&mut self.by_shape, key, pass);
        }
        for (o, found) in expect.objects.iter().zip(objects_found(expect, detections)) {
            count(&mut self.objects_by_size, size_key(o), found);
            count(&mut self.objects_by_shape, o.shape.word(), found);
        }
        for d in detections {
            let key = d.shape.map_or(UNKNOWN_SHAPE, Shape::word);
            *self.detected_shapes.entry(key.to_string()).or_default() += 1;
        }
    }

    /// Lines of the text report, each indented by `indent`.
    pub fn text(&self, indent: &str) -> String {
        let mut s = String::new();
        for (title, map) in [
            ("by size", &self.by_size),
            ("by shape", &self.by_shape),
            ("objects found by size", &self.objects_by_size),
            ("objects found by shape", &self.objects_by_shape),
        ] {
            if map.is_empty() {
                continue;
            }
            s.push_str(&format!("{indent}{title}:\n"));
            s.push_str(&table(map, &format!("{indent}  ")));
        }
        if !self.detected_shapes.is_empty() {
            let seen: Vec<String> = self
                .detected_shapes
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            s.push_str(&format!("{indent}detected shapes: {}\n", seen.join(", ")));
        }
        s
    }
}

/// One line per key: `key  pass/total  accuracy`.
pub fn table(map: &BTreeMap<String, Tally>, indent: &str) -> String {
    map.iter()
        .map(|(k, t)| format!("{indent}{k:<18} {}\n", t.text()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::score::{check, ground_truth, MatchMode};
    use crate::shapes::spec::{Colour, Size};

    fn spec(shape: Shape, colour: Option<Colour>, size: Option<Size>) -> ObjectSpec {
        ObjectSpec {
            shape,
            colour,
            size,
            position: None,
        }
    }

    fn detection(shape: Option<Shape>, colour: Colour, size: Size) -> Detection {
        Detection {
            colour,
            shape,
            size,
            side: if size == Size::Small { 12 } else { 22 },
            bbox: [0, 0, 12, 12],
            center: [6.0, 6.0],
            area: 100,
            fill: 0.7,
            aspect: 1.0,
            iou: 0.9,
        }
    }

    fn contains(objects: Vec<ObjectSpec>) -> Expectation {
        Expectation {
            objects,
            relation: None,
            mode: MatchMode::Contains,
        }
    }

    #[test]
    fn tally_counts_and_serialises() {
        let t = Tally::of([true, false, true, true]);
        assert_eq!((t.pass, t.total), (3, 4));
        assert_eq!(t.accuracy(), Some(0.75));
        let v = serde_json::to_value(t).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"pass": 3, "total": 4, "accuracy": 0.75})
        );
        assert_eq!(Tally::default().accuracy(), None);
        assert!(serde_json::to_value(Tally::default()).unwrap()["accuracy"].is_null());
    }

    #[test]
    fn breakdown_counts_images_per_bucket_and_objects_once() {
        let mut b = Breakdown::default();
        let triangle = spec(Shape::Triangle, Some(Colour::Purple), Some(Size::Small));
        let diamond = spec(Shape::Diamond, Some(Colour::Red), Some(Size::Large));
        let two = contains(vec![triangle, diamond]);
        // Only the diamond is drawn: the image fails, one of its two objects is found.
        let dets = [detection(Some(Shape::Diamond), Colour::Red, Size::Large)];
        let pass = check(&two, &dets);
        assert!(!pass);
        b.add(&two, &dets, pass);
        // A prompt without size words that passes.
        let one = contains(vec![spec(Shape::Triangle, None, None)]);
        let dets = [detection(Some(Shape::Triangle), Colour::Green, Size::Small)];
        let pass = check(&one, &dets);
        assert!(pass);
        b.add(&one, &dets, pass);

        let get = |m: &BTreeMap<String, Tally>, k: &str| m.get(k).map(|t| (t.pass, t.total));
        assert_eq!(get(&b.by_size, "small"), Some((0, 1)));
        assert_eq!(get(&b.by_size, "large"), Some((0, 1)));
        assert_eq!(get(&b.by_size, UNSPECIFIED), Some((1, 1)));
        assert_eq!(get(&b.by_shape, "triangle"), Some((1, 2)));
        assert_eq!(get(&b.by_shape, "diamond"), Some((0, 1)));
        assert_eq!(b.by_shape.len(), 2);
        assert_eq!(get(&b.objects_by_shape, "triangle"), Some((1, 2)));
        assert_eq!(get(&b.objects_by_shape, "diamond"), Some((1, 1)));
        assert_eq!(get(&b.objects_by_size, "small"), Some((0, 1)));
        assert_eq!(get(&b.objects_by_size, "large"), Some((1, 1)));
        assert_eq!(b.detected_shapes.get("diamond"), Some(&1));
        assert_eq!(b.detected_shapes.get("triangle"), Some(&1));
        assert_eq!(b.detected_shapes.len(), 2);
        b.add(&one, &[detection(None, Colour::Red, Size::Small)], false);
        assert_eq!(b.detected_shapes.get(UNKNOWN_SHAPE), Some(&1));
        let text = b.text("");
        assert!(
            text.contains("by shape:") && text.contains("triangle"),
            "{text}"
        );
        assert!(
            text.contains("detected shapes: diamond 1, triangle 1, unknown 1"),
            "{text}"
        );
    }

    #[test]
    fn identical_objects_are_found_up_to_the_matching_detections() {
        let star = spec(Shape::Star, Some(Colour::Blue), None);
        let three = Expectation {
            objects: vec![star; 3],
            relation: None,
            mode: MatchMode::Count,
        };
        let dets = [
            detection(Some(Shape::Star), Colour::Blue, Size::Small),
            detection(Some(Shape::Star), Colour::Blue, Size::Large),
            detection(Some(Shape::Star), Colour::Red, Size::Small),
            detection(None, Colour::Blue, Size::Small),
        ];
        assert_eq!(objects_found(&three, &dets), [true, true, false]);
    }

    #[test]
    fn ground_truth_of_a_scene_fills_size_buckets() {
        let s = crate::shapes::sample(3, crate::shapes::Split::Train, 7).scene;
        let expect = ground_truth(&s);
        let sizes: BTreeSet<&str> = s.objects.iter().map(|o| o.size.word()).collect();
        assert_eq!(size_keys(&expect), sizes);
        let shapes: Vec<Shape> = s.objects.iter().map(|o| o.shape).collect();
        assert_eq!(shape_keys(&expect), shape_words(&shapes));
    }
}
