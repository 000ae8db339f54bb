//! The plot of BENCHMARKS.md: the announce-latency distributions (announcer, bare etcd
//! transaction, shell loop) as cumulative curves on a logarithmic time axis, drawn into a
//! PNG by the harness itself.
//!
//! No plotting framework: the picture is axis-aligned lines (an empirical distribution is
//! a staircase) and text, so a small raster of our own does it, with `ab_glyph` for the
//! text (Debian's DejaVu Sans, `fonts-dejavu-core`; `BENCH_FONT` names another TTF) and
//! `png` to encode. Without a font the plot is drawn without its text, and says so.

use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use anyhow::Context as _;

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

/// Whether the text could be drawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    /// Drawn with this font.
    Font(PathBuf),
    /// No font found: the plot has no text.
    None,
}

impl Text {
    /// One line for the summary.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Text::Font(p) => format!("drawn by the harness (ab_glyph + png), text in {}", p.display()),
            Text::None => "drawn by the harness WITHOUT text: no TTF font found (apt-get install fonts-dejavu-core \
                           or set BENCH_FONT)"
                .to_owned(),
        }
    }
}

const W: usize = 1000;
const H: usize = 700;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 160.0;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [30, 30, 30];
const GRID: Rgb = [225, 225, 225];
const GRID_MINOR: Rgb = [242, 242, 242];
const OURS: Rgb = [31, 119, 180];
const BARE: Rgb = [44, 160, 44];
const SHELL: Rgb = [214, 39, 40];

/// An RGB raster.
struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            px: WHITE.repeat(W * H),
        }
    }

    fn blend(&mut self, x: i64, y: i64, c: Rgb, alpha: f32) {
        if x < 0 || y < 0 || x >= W as i64 || y >= H as i64 {
            return;
        }
        let i = (y as usize * W + x as usize) * 3;
        let a = alpha.clamp(0.0, 1.0);
        for (px, target) in self.px[i..i + 3].iter_mut().zip(c) {
            let old = f32::from(*px);
            *px = (old + (f32::from(target) - old) * a).round() as u8;
        }
    }

    /// A filled rectangle from (x0, y0) to (x1, y1), ends included, any order.
    fn rect(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, c: Rgb) {
        let (xa, xb) = (x0.min(x1).round() as i64, x0.max(x1).round() as i64);
        let (ya, yb) = (y0.min(y1).round() as i64, y0.max(y1).round() as i64);
        for y in ya..=yb {
            for x in xa..=xb {
                self.blend(x, y, c, 1.0);
            }
        }
    }

    fn hline(&mut self, x0: f64, x1: f64, y: f64, width: f64, c: Rgb) {
        let h = (width - 1.0) / 2.0;
        self.rect(x0, y - h, x1, y + h, c);
    }

    fn vline(&mut self, x: f64, y0: f64, y1: f64, width: f64, c: Rgb) {
        let h = (width - 1.0) / 2.0;
        self.rect(x - h, y0, x + h, y1, c);
    }
}

/// Text drawing with one font.
struct Pen {
    font: FontVec,
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Center,
    Right,
}

/// Size, alignment and colour of a piece of text.
#[derive(Clone, Copy)]
struct Style {
    size: f32,
    align: Align,
    color: Rgb,
}

impl Style {
    const fn new(size: f32, align: Align) -> Style {
        Style {
            size,
            align,
            color: BLACK,
        }
    }
}

impl Pen {
    fn load() -> Option<(Pen, PathBuf)> {
        let mut candidates: Vec<PathBuf> = std::env::var_os("BENCH_FONT").map(PathBuf::from).into_iter().collect();
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            ]
            .map(PathBuf::from),
        );
        candidates.into_iter().find_map(|p| {
            let bytes = std::fs::read(&p).ok()?;
            let font = FontVec::try_from_vec(bytes).ok()?;
            Some((Pen { font }, p))
        })
    }

    fn width(&self, size: f32, text: &str) -> f32 {
        let f = self.font.as_scaled(PxScale::from(size));
        let mut w = 0.0;
        let mut prev = None;
        for ch in text.chars() {
            let id = f.glyph_id(ch);
            if let Some(p) = prev {
                w += f.kern(p, id);
            }
            w += f.h_advance(id);
            prev = Some(id);
        }
        w
    }

    /// Draws `text` with its baseline at `y`.
    fn text(&self, canvas: &mut Canvas, x: f64, y: f64, style: Style, text: &str) {
        let Style { size, align, color: c } = style;
        let f = self.font.as_scaled(PxScale::from(size));
        let width = self.width(size, text);
        let mut pen_x = match align {
            Align::Left => x as f32,
            Align::Center => x as f32 - width / 2.0,
            Align::Right => x as f32 - width,
        };
        let mut prev = None;
        for ch in text.chars() {
            let id = f.glyph_id(ch);
            if let Some(p) = prev {
                pen_x += f.kern(p, id);
            }
            let glyph = id.with_scale_and_position(PxScale::from(size), ab_glyph::point(pen_x, y as f32));
            if let Some(outlined) = self.font.outline_glyph(glyph) {
                let b = outlined.px_bounds();
                outlined.draw(|gx, gy, cov| {
                    canvas.blend(b.min.x as i64 + i64::from(gx), b.min.y as i64 + i64::from(gy), c, cov);
                });
            }
            pen_x += f.h_advance(id);
            prev = Some(id);
        }
    }

    /// Draws `text` rotated a quarter turn counter-clockwise, centred on (x, y).
    fn vertical_text(&self, canvas: &mut Canvas, x: f64, y: f64, size: f32, c: Rgb, text: &str) {
        // Draw horizontally into a scratch canvas region, then copy rotated.
        let width = self.width(size, text).ceil() as usize + 4;
        let height = (size * 1.4).ceil() as usize;
        let mut scratch = vec![0f32; width * height];
        let f = self.font.as_scaled(PxScale::from(size));
        let mut pen_x = 2.0f32;
        let baseline = f.ascent();
        let mut prev = None;
        for ch in text.chars() {
            let id = f.glyph_id(ch);
            if let Some(p) = prev {
                pen_x += f.kern(p, id);
            }
            let glyph = id.with_scale_and_position(PxScale::from(size), ab_glyph::point(pen_x, baseline));
            if let Some(outlined) = self.font.outline_glyph(glyph) {
                let b = outlined.px_bounds();
                outlined.draw(|gx, gy, cov| {
                    let sx = b.min.x as i64 + i64::from(gx);
                    let sy = b.min.y as i64 + i64::from(gy);
                    if sx >= 0 && sy >= 0 && (sx as usize) < width && (sy as usize) < height {
                        let cell = &mut scratch[sy as usize * width + sx as usize];
                        *cell = cell.max(cov);
                    }
                });
            }
            pen_x += f.h_advance(id);
            prev = Some(id);
        }
        let x0 = x - height as f64 / 2.0;
        let y0 = y + width as f64 / 2.0;
        for sy in 0..height {
            for sx in 0..width {
                let cov = scratch[sy * width + sx];
                if cov > 0.0 {
                    canvas.blend((x0 + sy as f64) as i64, (y0 - sx as f64) as i64, c, cov);
                }
            }
        }
    }
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
    let lo = min.log10().floor() as i32;
    let hi = (max.log10().ceil() as i32).max(lo + 1);
    (lo, hi)
}

/// The x pixel of `ms` on a log axis over decades `lo..hi` (values at or below zero sit
/// on the left edge).
#[must_use]
pub fn x_of(ms: f64, lo: i32, hi: i32) -> f64 {
    let plot_w = W as f64 - LEFT - RIGHT;
    let v = if ms > 0.0 { ms.log10() } else { f64::from(lo) };
    let t = ((v - f64::from(lo)) / f64::from(hi - lo)).clamp(0.0, 1.0);
    LEFT + t * plot_w
}

fn y_of(share: f64) -> f64 {
    let plot_h = H as f64 - TOP - BOTTOM;
    TOP + (1.0 - share.clamp(0.0, 1.0)) * plot_h
}

fn label_ms(e: i32) -> String {
    let v = 10f64.powi(e);
    if v >= 1000.0 {
        format!("{} s", v / 1000.0)
    } else {
        format!("{v} ms")
    }
}

fn staircase(canvas: &mut Canvas, samples: &[f64], lo: i32, hi: i32, c: Rgb) {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mut prev_y = y_of(0.0);
    for (i, v) in sorted.iter().enumerate() {
        let x = x_of(*v, lo, hi);
        let y = y_of((i + 1) as f64 / n);
        canvas.vline(x, prev_y, y, 2.5, c);
        let next_x = sorted.get(i + 1).map_or(x, |nv| x_of(*nv, lo, hi));
        canvas.hline(x, next_x, y, 2.5, c);
        prev_y = y;
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

/// Draws the plot into `path` (PNG, 1000 x 700).
///
/// # Errors
/// When the file cannot be written.
pub fn draw(series: &Series, path: &Path) -> anyhow::Result<Text> {
    let all: Vec<f64> = series
        .ours
        .iter()
        .chain(&series.bare)
        .chain(&series.shell)
        .copied()
        .collect();
    let (lo, hi) = decades(&all);
    let mut canvas = Canvas::new();
    let (x_left, x_right) = (LEFT, W as f64 - RIGHT);
    let (y_top, y_bottom) = (TOP, H as f64 - BOTTOM);

    // Grid: decades, with 2x and 5x between them; every 10 %.
    for e in lo..hi {
        for m in [2.0, 5.0] {
            canvas.vline(x_of(m * 10f64.powi(e), lo, hi), y_top, y_bottom, 1.0, GRID_MINOR);
        }
    }
    for e in lo..=hi {
        canvas.vline(x_of(10f64.powi(e), lo, hi), y_top, y_bottom, 1.0, GRID);
    }
    for k in 0..=10 {
        canvas.hline(x_left, x_right, y_of(f64::from(k) / 10.0), 1.0, GRID);
    }
    staircase(&mut canvas, &series.shell, lo, hi, SHELL);
    staircase(&mut canvas, &series.ours, lo, hi, OURS);
    staircase(&mut canvas, &series.bare, lo, hi, BARE);
    // Axes.
    canvas.hline(x_left, x_right, y_bottom, 1.5, BLACK);
    canvas.vline(x_left, y_top, y_bottom, 1.5, BLACK);

    let legend = [
        (BARE, legend_line("bare etcd txn (5 puts on a lease)", &series.bare)),
        (OURS, legend_line("announcer (host mode)", &series.ours)),
        (SHELL, legend_line("seed's shell loop (bash + etcdctl)", &series.shell)),
    ];
    // The legend goes under the axis label, outside the plot: no curve runs under it.
    let legend_y = y_bottom + 82.0;
    for (i, (c, _)) in legend.iter().enumerate() {
        let y = legend_y + i as f64 * 22.0;
        canvas.hline(x_left + 14.0, x_left + 44.0, y - 5.0, 3.0, *c);
    }

    let text = match Pen::load() {
        Some((pen, font_path)) => {
            pen.text(
                &mut canvas,
                W as f64 / 2.0,
                34.0,
                Style::new(20.0, Align::Center),
                "Announce latency: container start \u{2192} record visible to an etcd watcher",
            );
            for e in lo..=hi {
                pen.text(
                    &mut canvas,
                    x_of(10f64.powi(e), lo, hi),
                    y_bottom + 20.0,
                    Style::new(14.0, Align::Center),
                    &label_ms(e),
                );
            }
            for k in (0..=10).step_by(2) {
                pen.text(
                    &mut canvas,
                    x_left - 8.0,
                    y_of(f64::from(k) / 10.0) + 5.0,
                    Style::new(14.0, Align::Right),
                    &format!("{}%", k * 10),
                );
            }
            pen.text(
                &mut canvas,
                (x_left + x_right) / 2.0,
                y_bottom + 48.0,
                Style::new(15.0, Align::Center),
                "latency (log scale)",
            );
            pen.vertical_text(
                &mut canvas,
                22.0,
                (y_top + y_bottom) / 2.0,
                15.0,
                BLACK,
                "share of records visible",
            );
            for (i, (_, line)) in legend.iter().enumerate() {
                let y = legend_y + i as f64 * 22.0;
                pen.text(&mut canvas, x_left + 52.0, y, Style::new(14.0, Align::Left), line);
            }
            Text::Font(font_path)
        }
        None => Text::None,
    };

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().context("write the PNG header")?;
    writer.write_image_data(&canvas.px).context("write the PNG")?;
    writer.finish().context("finish the PNG")?;
    Ok(text)
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
        assert_eq!(x_of(1.0, 0, 2), LEFT);
        assert_eq!(x_of(100.0, 0, 2), W as f64 - RIGHT);
        assert!((x_of(10.0, 0, 2) - (LEFT + (W as f64 - LEFT - RIGHT) / 2.0)).abs() < 1e-9);
        assert_eq!(x_of(-1.0, 0, 2), LEFT, "a negative latency sits on the left edge");
    }

    #[test]
    fn draws_a_png_with_each_series_in_its_colour() {
        let dir = tempfile_dir();
        let path = dir.join("plot.png");
        let series = Series {
            ours: (1..=50).map(|i| f64::from(i) * 0.3).collect(),
            bare: (1..=50).map(|i| f64::from(i) * 0.05).collect(),
            shell: (1..=5).map(|i| f64::from(i) * 2000.0).collect(),
        };
        let text = draw(&series, &path).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (W as u32, H as u32));
        let has = |c: Rgb| buf.chunks(3).any(|p| p == c);
        assert!(has(OURS) && has(BARE) && has(SHELL), "every series is drawn");
        // With a font, there is text above the plot area (the title).
        if matches!(text, Text::Font(_)) {
            let title_dark = buf[..(TOP as usize - 10) * W * 3]
                .chunks(3)
                .filter(|p| p[0] < 100)
                .count();
            assert!(title_dark > 100, "the title is drawn");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("bench-plot-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
