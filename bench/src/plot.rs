//! The plot of BENCHMARKS.md: the announce-latency distributions (announcer, bare etcd
//! transaction, shell loop) as cumulative curves on a logarithmic time axis, drawn into a
//! PNG with `plotters` (bitmap backend; text through its `ab_glyph` feature with Debian's
//! DejaVu Sans from `fonts-dejavu-core`, or the TTF named by `BENCH_FONT`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::stats;

/// The three distributions, in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// The announcer: container start -> record visible.
    pub ours: Vec<f64>,
    /// A bare etcd transaction of the same size: issued -> visible.
    pub bare: Vec<f64>,
    /// The seed's shell loop: container start -> record visible.
    pub shell: Vec<f64>,
}

/// The font the text was drawn with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text(pub PathBuf);

impl Text {
    /// One line for the summary.
    #[must_use]
    pub fn describe(&self) -> String {
        format!("drawn by the harness with plotters, text in {}", self.0.display())
    }
}

/// Picture size in pixels.
pub const SIZE: (u32, u32) = (1000, 700);

/// Colours of the three series (matplotlib's first three, for familiarity).
pub const OURS: RGBColor = RGBColor(31, 119, 180);
/// The bare transaction's colour.
pub const BARE: RGBColor = RGBColor(44, 160, 44);
/// The shell loop's colour.
pub const SHELL: RGBColor = RGBColor(214, 39, 40);

const FONT_FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a TTF as plotters' `sans-serif` (once per process).
fn register_font() -> anyhow::Result<PathBuf> {
    static FONT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("BENCH_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_FILES.iter().map(PathBuf::from))
            .collect();
        let path = candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
            "no TTF font found: apt-get install fonts-dejavu-core (scripts/setup does) or set BENCH_FONT".to_owned()
        })?;
        let bytes = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a usable TTF font", path.display()))?;
        Ok(path)
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The decades the x axis spans: `(lo, hi)` exponents of 10 with every positive sample
/// inside `[10^lo, 10^hi]`; at least one decade.
#[must_use]
pub fn decades(samples: &[f64]) -> (i32, i32) {
    let positive: Vec<f64> = samples.iter().copied().filter(|v| *v > 0.0 && v.is_finite()).collect();
    if positive.is_empty() {
        return (-1, 1);
    }
    let min = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let max = positive.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    #[allow(clippy::cast_possible_truncation)]
    let lo = min.log10().floor() as i32;
    #[allow(clippy::cast_possible_truncation)]
    let hi = (max.log10().ceil() as i32).max(lo + 1);
    (lo, hi)
}

/// The empirical distribution as a staircase: `(latency ms, % of samples at or below)`,
/// starting at 0 % on the smallest sample. Values at or below zero sit at `floor_ms`.
#[must_use]
pub fn staircase(samples: &[f64], floor_ms: f64) -> Vec<(f64, f64)> {
    let mut sorted: Vec<f64> = samples
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .map(|v| v.max(floor_ms))
        .collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mut points = Vec::with_capacity(sorted.len() * 2);
    let mut share = 0.0;
    for (i, v) in sorted.iter().enumerate() {
        points.push((*v, share));
        share = (i + 1) as f64 * 100.0 / n;
        points.push((*v, share));
    }
    points
}

fn label_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{} s", v / 1000.0)
    } else {
        format!("{v} ms")
    }
}

fn legend_line(name: &str, samples: &[f64]) -> String {
    match stats::Dist::of(samples) {
        Some(d) => format!(
            "{name} (n={}): p50 {} ms, p99 {} ms",
            d.n,
            crate::summary::number(d.p50),
            crate::summary::number(d.p99)
        ),
        None => format!("{name}: not measured"),
    }
}

/// Draws the plot into `path` (PNG, [`SIZE`]).
///
/// # Errors
/// When no font can be found or the file cannot be written.
pub fn draw(series: &Series, path: &Path) -> anyhow::Result<Text> {
    let font = register_font()?;
    let all: Vec<f64> = series
        .ours
        .iter()
        .chain(&series.bare)
        .chain(&series.shell)
        .copied()
        .collect();
    let (lo, hi) = decades(&all);
    let (x_min, x_max) = (10f64.powi(lo), 10f64.powi(hi));

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Announce latency: container start → record visible to an etcd watcher",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("latency (log scale)")
        .y_desc("share of records visible")
        .x_label_formatter(&|v| label_ms(*v))
        .y_label_formatter(&|v| format!("{v:.0}%"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;

    let curves = [
        ("bare etcd txn (5 puts on a lease)", &series.bare, BARE),
        ("announcer (host mode)", &series.ours, OURS),
        ("seed's shell loop (bash + etcdctl)", &series.shell, SHELL),
    ];
    for (name, samples, colour) in curves {
        if samples.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(staircase(samples, x_min), colour.stroke_width(3)))?
            .label(legend_line(name, samples))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(200, 200, 200))
        .draw()?;
    root.present().with_context(|| format!("write {}", path.display()))?;
    Ok(Text(font))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_spans_whole_decades_around_the_samples() {
        assert_eq!(decades(&[0.4, 3.0, 7000.0]), (-1, 4));
        assert_eq!(decades(&[1.0, 10.0]), (0, 1));
        assert_eq!(decades(&[5.0]), (0, 1));
        assert_eq!(decades(&[]), (-1, 1));
        assert_eq!(decades(&[-3.0, 0.0]), (-1, 1));
    }

    #[test]
    fn the_staircase_climbs_to_100_percent_in_sample_order() {
        let s = staircase(&[3.0, 1.0, 2.0, -1.0], 0.1);
        assert_eq!(
            s,
            vec![
                (0.1, 0.0),
                (0.1, 25.0),
                (1.0, 25.0),
                (1.0, 50.0),
                (2.0, 50.0),
                (2.0, 75.0),
                (3.0, 75.0),
                (3.0, 100.0)
            ]
        );
        assert!(staircase(&[], 1.0).is_empty());
    }

    #[test]
    fn draws_a_png_with_each_series_in_its_colour() {
        let dir = std::env::temp_dir().join(format!("bench-plot-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plot.png");
        let series = Series {
            ours: (1..=50).map(|i| f64::from(i) * 0.3).collect(),
            bare: (1..=50).map(|i| f64::from(i) * 0.05).collect(),
            shell: (1..=5).map(|i| f64::from(i) * 2000.0).collect(),
        };
        draw(&series, &path).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), SIZE);
        let px = info.color_type.samples();
        let has = |c: RGBColor| buf.chunks(px).any(|p| p[..3] == [c.0, c.1, c.2]);
        assert!(has(OURS) && has(BARE) && has(SHELL), "every series is drawn");
        // The title: dark pixels in the top band.
        let title_dark = buf[..40 * SIZE.0 as usize * px]
            .chunks(px)
            .filter(|p| p[0] < 100)
            .count();
        assert!(title_dark > 100, "the title is drawn");
        let _ = std::fs::remove_dir_all(dir);
    }
}
