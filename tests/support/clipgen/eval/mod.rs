//! The evaluation set: studio-like clips over real photos, with products tilted, lit, covered
//! and blurred, and look-alikes that must not be named; split into `tune` and `test` catalogs
//! with disjoint products.

mod plan;
mod products;
mod render;
mod set;
mod truth;

pub use plan::{
    plan_split, Appearance, ClipPlan, Hand, Light, Placement, PlanInput, Pose, Transition,
};
pub use products::{group_products, Group};
pub use render::EvalScene;
pub use set::{
    is_current, make_eval_set, read_manifest, BackdropKind, EvalSetSpec, Manifest, ManifestClip,
    NoProgress, SetProgress, Split, GENERATOR_VERSION, MANIFEST_FILE,
};
pub use truth::{read_eval_truth, Conditions, EvalTruth, TrackPoint};
