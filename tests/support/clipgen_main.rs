//! `spotter-clipgen`: makes test catalogs and clips with ground truth for Spotter.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use spotter_protocol::Catalog;
use spotter_tests::clipgen::eval::{
    group_products, make_eval_set, BackdropKind, EvalSetSpec, Group, SetProgress, Split,
};
use spotter_tests::clipgen::{
    build_catalog, decode_frames, make_clip, make_demo, parse_size, preset, preset_names,
    truth_path, ClipSpec, ProductSource, Show, SPEED_PRESETS,
};

/// Makes Spotter's test material: product catalogs from clip art, and H.264 clips in which those
/// products come and go on cue, each with a ground-truth file.
///
/// Catalogs follow the protocol's format (catalog.toml plus reference photos). Clips are
/// 4:2:0 H.264 in MP4 with an IDR frame every 2 s and no B-frames, like a stream sent to IVS; next
/// to `clip.mp4` goes `clip.truth.json`: [{sku, start_ms, end_ms, bbox}], bbox normalised
/// [x0, y0, x1, y1] covering the product for the whole appearance.
#[derive(Parser, Debug)]
#[command(name = "spotter-clipgen", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

const EXAMPLES: &str = "Examples:
  spotter-clipgen catalog --out /tmp/cat --preset demo
  spotter-clipgen catalog --out /tmp/cat --products MUG-001 'BALL-1=/usr/share/openclipart/png/recreation/sports/baseball_anthony_liekens_01.png:Baseball:9.99'
  spotter-clipgen clip --catalog /tmp/cat --out /tmp/clip.mp4 --duration-secs 12 --show MUG-001@3-9
  spotter-clipgen demo --out /tmp/demo
  spotter-clipgen eval --out target/eval-set
  spotter-clipgen eval --out /tmp/eval --split test --clips 2 --backdrop studio
  spotter-clipgen frames /tmp/clip.mp4 --at 1 --at 5.5 --out /tmp/frames";

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build a catalog directory (catalog.toml and reference photos) from clip art.
    ///
    /// For each product: <sku>-front.png (the source as is), <sku>-white.png (flattened onto
    /// white) and <sku>-tilt.png (rotated 8 degrees, smaller, on pale grey); price in USD, url
    /// https://shop.example/<sku in lower case>.
    Catalog {
        /// Directory to write (created if missing; existing files of the same names are replaced).
        #[arg(long)]
        out: PathBuf,
        /// A built-in product set ("demo": mug, guitar, tennis shoes, camera, desk lamp).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(preset_names().iter().copied()))]
        preset: Option<String>,
        /// Products to add: a preset SKU (MUG-001, GTR-001, SHOE-001, CAM-001, LAMP-001) or
        /// SKU=PATH[:NAME[:PRICE]] with PATH a PNG with transparency.
        #[arg(long, num_args = 1..)]
        products: Vec<String>,
    },
    /// Render and encode a clip with products on cue, and write its truth file next to it.
    Clip {
        /// Catalog directory (from `catalog`); each product is drawn from its first image.
        #[arg(long)]
        catalog: PathBuf,
        /// Output file (.mp4); the truth goes to the same name with .truth.json.
        #[arg(long)]
        out: PathBuf,
        /// Length in seconds.
        #[arg(long)]
        duration_secs: f64,
        /// Frames per second.
        #[arg(long, default_value_t = 30)]
        fps: u32,
        /// Frame size, WIDTHxHEIGHT.
        #[arg(long, default_value = "1280x720")]
        size: String,
        /// An appearance: SKU@START-END[@X,Y,SCALE], times in seconds, X,Y the centre (0..1),
        /// SCALE the height as a fraction of the frame (default 0.5,0.5,0.45). Repeatable.
        #[arg(long = "show", num_args = 1..)]
        shows: Vec<Show>,
        /// Seed for the studio set's layout and texture.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// H.264 bitrate in kbit/s.
        #[arg(long, default_value_t = 4000)]
        bitrate_kbps: u32,
        /// x264 speed preset: faster ones encode sooner at lower quality for the bitrate.
        #[arg(long, default_value = "veryfast", value_parser = clap::builder::PossibleValuesParser::new(SPEED_PRESETS.iter().copied()))]
        speed_preset: String,
        /// Paint each frame's index (0-based, 16 bits) into the top-left corner: a row of 18
        /// cells of 16x16 px at (16, 16) on 1280x720, scaled for other sizes. Shows must stay
        /// clear of it (below y 0.05 or right of x 0.24).
        #[arg(long)]
        frame_code: bool,
    },
    /// The demo: the `demo` catalog in OUT/catalog and a 1280x720 30 fps clip OUT/demo.mp4 in
    /// which the products come and go one or two at a time, with empty stretches.
    Demo {
        /// Directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Length in seconds (the schedule fills 60 s; shorter keeps the shows that fit).
        #[arg(long, default_value_t = 60.0)]
        duration_secs: f64,
    },
    /// The evaluation set: for each split (`tune`, `test`) a catalog of 15 products and clips
    /// over real photos (Debian's mate-backgrounds) in which catalog products and look-alikes
    /// (in no catalog) come and go, scaled, tilted, lit, partly covered by a hand and
    /// motion-blurred. Deterministic from --seed.
    ///
    /// Writes OUT/<split>/catalog/, OUT/<split>/clip-NN.mp4 with clip-NN.truth.json
    /// ([{sku, start_ms, end_ms, bbox, in_catalog, held_ms, conditions, track}]) and, last,
    /// OUT/<split>/split.json. A split whose split.json matches this generator and these
    /// options is left as it is (see --force).
    Eval {
        /// Directory to write.
        #[arg(long, required_unless_present = "list_products")]
        out: Option<PathBuf>,
        /// Splits to make (repeatable); both by default.
        #[arg(long = "split", value_parser = ["tune", "test"])]
        splits: Vec<String>,
        /// Clips per split.
        #[arg(long, default_value_t = EvalSetSpec::default().clips)]
        clips: usize,
        /// Shortest clip, seconds.
        #[arg(long, default_value_t = 20.0)]
        min_secs: f64,
        /// Longest clip, seconds.
        #[arg(long, default_value_t = 30.0)]
        max_secs: f64,
        /// Frame size, WIDTHxHEIGHT.
        #[arg(long, default_value = "1280x720")]
        size: String,
        /// Frames per second.
        #[arg(long, default_value_t = 30)]
        fps: u32,
        /// Seeds every plan: the same seed gives the same set.
        #[arg(long, default_value_t = EvalSetSpec::default().seed)]
        seed: u64,
        /// H.264 bitrate in kbit/s.
        #[arg(long, default_value_t = EvalSetSpec::default().bitrate_kbps)]
        bitrate_kbps: u32,
        /// x264 speed preset.
        #[arg(long, default_value = "superfast", value_parser = clap::builder::PossibleValuesParser::new(SPEED_PRESETS.iter().copied()))]
        speed_preset: String,
        /// Share of appearances that are look-alikes.
        #[arg(long, default_value_t = 0.33)]
        lookalike_share: f32,
        /// Behind the products: `photo` (mate-backgrounds) or `studio` (the procedural set).
        #[arg(long, default_value = "photo", value_parser = ["photo", "studio"])]
        backdrop: String,
        /// Remake splits even when they are complete and current.
        #[arg(long)]
        force: bool,
        /// Clips made at once (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Print the products of each group and exit.
        #[arg(long)]
        list_products: bool,
    },
    /// Extract frames of a clip as PNG, to look at what was rendered.
    Frames {
        /// The clip.
        clip: PathBuf,
        /// Times in seconds (repeatable); the nearest frame is written.
        #[arg(long = "at", required = true, num_args = 1..)]
        at_secs: Vec<f64>,
        /// Directory to write frame-<ms>.png into.
        #[arg(long)]
        out: PathBuf,
    },
}

fn secs_to_ms(secs: f64, what: &str) -> anyhow::Result<u64> {
    if !(secs.is_finite() && secs > 0.0 && secs < 86_400.0) {
        bail!("{what} must be a positive number of seconds, got {secs}");
    }
    Ok((secs * 1000.0).round() as u64)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    match cli.command {
        Cmd::Catalog {
            out,
            preset: set,
            products,
        } => {
            let mut sources: Vec<ProductSource> = match set {
                Some(name) => preset(&name).with_context(|| format!("no preset {name:?}"))?,
                None => Vec::new(),
            };
            for spec in &products {
                sources.push(ProductSource::parse(spec)?);
            }
            if sources.is_empty() {
                bail!("no products: pass --preset demo and/or --products SPEC...");
            }
            let catalog = build_catalog(&out, &sources)
                .with_context(|| format!("cannot build the catalog in {}", out.display()))?;
            println!(
                "wrote {} with {} products in {:.1} s",
                out.join("catalog.toml").display(),
                catalog.products.len(),
                started.elapsed().as_secs_f32()
            );
        }
        Cmd::Clip {
            catalog,
            out,
            duration_secs,
            fps,
            size,
            shows,
            seed,
            bitrate_kbps,
            speed_preset,
            frame_code,
        } => {
            let (width, height) = parse_size(&size)?;
            if !(1..=120).contains(&fps) {
                bail!("--fps must be within 1..=120, got {fps}");
            }
            let catalog = Catalog::load(&catalog).context("cannot load the catalog")?;
            let spec = ClipSpec {
                width,
                height,
                fps,
                duration_ms: secs_to_ms(duration_secs, "--duration-secs")?,
                seed,
                bitrate_kbps,
                speed_preset,
                shows,
                frame_code,
            };
            let truth = make_clip(&catalog, &spec, &out)
                .with_context(|| format!("cannot make {}", out.display()))?;
            println!(
                "wrote {} and {} ({} appearances) in {:.1} s",
                out.display(),
                truth_path(&out).display(),
                truth.len(),
                started.elapsed().as_secs_f32()
            );
        }
        Cmd::Demo { out, duration_secs } => {
            let demo = make_demo(&out, secs_to_ms(duration_secs, "--duration-secs")?)
                .with_context(|| format!("cannot make the demo in {}", out.display()))?;
            println!(
                "wrote {} ({} products), {} and {} ({} appearances) in {:.1} s",
                demo.catalog.dir.display(),
                demo.catalog.products.len(),
                demo.clip.display(),
                demo.truth_file.display(),
                demo.truth.len(),
                started.elapsed().as_secs_f32()
            );
        }
        Cmd::Eval {
            out,
            splits,
            clips,
            min_secs,
            max_secs,
            size,
            fps,
            seed,
            bitrate_kbps,
            speed_preset,
            lookalike_share,
            backdrop,
            force,
            jobs,
            list_products,
        } => {
            if list_products {
                for (name, group) in [
                    ("tune", Group::Tune),
                    ("test", Group::Test),
                    ("look-alikes", Group::LookAlike),
                ] {
                    println!("{name}:");
                    for p in group_products(group) {
                        println!("  {:<9} {:<28} {}", p.sku, p.name, p.image.display());
                    }
                }
                return Ok(());
            }
            let out = out.context("--out is required")?;
            let (width, height) = parse_size(&size)?;
            if !(1..=120).contains(&fps) {
                bail!("--fps must be within 1..=120, got {fps}");
            }
            if !(0.0..=1.0).contains(&lookalike_share) {
                bail!("--lookalike-share must be within 0..=1, got {lookalike_share}");
            }
            let (lo, hi) = (
                secs_to_ms(min_secs, "--min-secs")?,
                secs_to_ms(max_secs, "--max-secs")?,
            );
            if hi < lo {
                bail!("--max-secs ({max_secs}) is below --min-secs ({min_secs})");
            }
            let spec = EvalSetSpec {
                seed,
                clips,
                duration_ms: (lo, hi),
                width,
                height,
                fps,
                bitrate_kbps,
                speed_preset,
                lookalike_share,
                backdrop: if backdrop == "studio" {
                    BackdropKind::Studio
                } else {
                    BackdropKind::Photo
                },
            };
            let splits: Vec<Split> = if splits.is_empty() {
                vec![Split::Tune, Split::Test]
            } else {
                splits.iter().map(|s| s.parse()).collect::<Result<_, _>>()?
            };
            let mut bar = Bar::default();
            let jobs = jobs.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
            let dirs = make_eval_set(&out, &splits, &spec, force, jobs, &mut bar)
                .with_context(|| format!("cannot make the evaluation set in {}", out.display()))?;
            bar.finish();
            for dir in dirs {
                println!("{}", dir.display());
            }
            eprintln!(
                "evaluation set ready in {:.1} s",
                started.elapsed().as_secs_f32()
            );
        }
        Cmd::Frames { clip, at_secs, out } => {
            let at_ms = at_secs
                .iter()
                .map(|&s| {
                    if s >= 0.0 {
                        Ok((s * 1000.0).round() as u64)
                    } else {
                        Err(anyhow::anyhow!("--at must not be negative, got {s}"))
                    }
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            for (pts, img) in decode_frames(&clip, &at_ms)? {
                let path = out.join(format!("frame-{pts:06}.png"));
                img.save(&path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}

/// A progress bar on stderr (hidden when stderr is not a terminal) and a log line a clip.
#[derive(Default)]
struct Bar {
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl SetProgress for Bar {
    fn split_started(&mut self, split: Split, clips: usize, frames: u64) {
        self.finish();
        tracing::info!(split = split.name(), clips, frames, "making split");
        let bar = indicatif::ProgressBar::new(frames);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} frames, {per_sec}, {eta} left",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(split.name());
        self.bar = Some(bar);
    }

    fn frames(&mut self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    fn clip_done(&mut self, split: Split, clip: &std::path::Path, appearances: usize, secs: f32) {
        let log = || {
            tracing::info!(
                split = split.name(),
                clip = %clip.display(),
                appearances,
                secs = format!("{secs:.1}"),
                "clip written"
            )
        };
        match &self.bar {
            Some(bar) => bar.suspend(log),
            None => log(),
        }
    }

    fn split_skipped(&mut self, split: Split, dir: &std::path::Path) {
        tracing::info!(
            split = split.name(),
            dir = %dir.display(),
            "split is complete and current: kept (--force remakes it)"
        );
    }
}

fn main() -> ExitCode {
    spotter_tests::init_tracing();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spotter-clipgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
