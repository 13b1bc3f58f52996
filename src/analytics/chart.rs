//! Charts for analysts, rendered in process (plotters) to SVG or PNG by the file's extension:
//! the opinion chart (share of each label per period, stacked, with the volume beneath) and the
//! drift chart (PSI per window with its thresholds, champion–shadow agreement beneath). The
//! font is compiled in (DejaVu Sans), so a PNG renders the same on a host without fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::analytics::report::Opinion;

/// Chart size in pixels (SVG user units), readable on a laptop screen and in a README.
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 720;

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        // The bytes are compiled in and known good; a failure here is a build defect.
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .unwrap_or_else(|_| panic!("the compiled-in DejaVu Sans font does not parse"));
    });
}

/// One line of the drift chart: a name and a value per window (None = no data there).
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// What the drift chart shows: windows on x; PSI lines above with the watch/alert thresholds,
/// agreement lines (0–1) below.
#[derive(Debug, Clone)]
pub struct Drift {
    pub title: String,
    pub windows: Vec<String>,
    pub psi: Vec<Line>,
    pub agreement: Vec<Line>,
    pub watch: f64,
    pub alert: f64,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Svg,
    Png,
}

fn kind(path: &Path) -> anyhow::Result<Kind> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("svg") => Ok(Kind::Svg),
        Some("png") => Ok(Kind::Png),
        _ => anyhow::bail!(
            "chart {}: the file name must end in .svg or .png (that picks the format)",
            path.display()
        ),
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

macro_rules! render {
    ($path:expr, $draw:ident, $data:expr) => {{
        register_font();
        let path: &Path = $path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        match kind(path)? {
            Kind::Svg => {
                let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
                $draw(&root, $data)?;
                root.present().map_err(err)?;
            }
            Kind::Png => {
                let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
                $draw(&root, $data)?;
                root.present().map_err(err)?;
            }
        }
        Ok(())
    }};
}

/// The colour analysts expect for a label (against red, neutral grey, favour green), else a
/// palette colour by position.
fn label_colour(label: &str, i: usize) -> RGBColor {
    let l = label.to_lowercase();
    if l.contains("against") || l.contains("contre") || l.contains("anti") {
        RGBColor(0xd6, 0x27, 0x28)
    } else if l.contains("neutral") || l.contains("neutre") {
        RGBColor(0x9e, 0x9e, 0x9e)
    } else if l.contains("favo") || l.contains("pour") || l.contains("pro") {
        RGBColor(0x2c, 0xa0, 0x2c)
    } else {
        palette(i)
    }
}

/// Line colours that stay apart from the threshold colours (orange, red) and from each other.
fn palette(i: usize) -> RGBColor {
    const COLOURS: [RGBColor; 6] = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x17, 0xbe, 0xcf),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    COLOURS[i % COLOURS.len()]
}

fn x_label(periods: &[String], v: &SegmentValue<u32>) -> String {
    match v {
        SegmentValue::CenterOf(i) => periods.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

/// Writes the opinion chart of `o` to `path` (`.svg` or `.png`).
pub fn opinion(o: &Opinion, path: &Path) -> anyhow::Result<()> {
    render!(path, draw_opinion, o)
}

fn draw_opinion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    o: &Opinion,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let n = o.periods.len() as u32;
    let title = format!(
        "Opinion on vaccination per {} — {} ({} tweets, {} to {})",
        o.period,
        o.series,
        o.total(),
        o.periods.first().map_or("", String::as_str),
        o.periods.last().map_or("", String::as_str)
    );
    let root = root.titled(&title, (FONT, 24)).map_err(err)?;
    let (top, bottom) = root.split_vertically((HEIGHT as f64 * 0.62) as u32);
    let labels_every = (n as usize).div_ceil(8).max(1);
    let periods = &o.periods;
    let fmt_x = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) if (*i as usize) % labels_every == 0 => x_label(periods, v),
        _ => String::new(),
    };

    let mut share = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(10)
        .y_label_area_size(70)
        .build_cartesian_2d((0u32..n.max(2) - 1).into_segmented(), 0f64..100f64)
        .map_err(err)?;
    share
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.min(200) as usize)
        .x_label_formatter(&|_| String::new())
        .y_desc("share of tweets (%)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(err)?;
    for (li, label) in o.labels.iter().enumerate() {
        let colour = label_colour(label, li);
        let rects = o.periods.iter().enumerate().map(|(p, _)| {
            let row = &o.counts[p];
            let total = row.iter().sum::<u64>().max(1) as f64;
            let below: u64 = row[..li].iter().sum();
            let y0 = below as f64 / total * 100.0;
            let y1 = (below + row[li]) as f64 / total * 100.0;
            Rectangle::new(
                [
                    (SegmentValue::Exact(p as u32), y0),
                    (SegmentValue::Exact(p as u32 + 1), y1),
                ],
                colour.filled(),
            )
        });
        share
            .draw_series(rects)
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    }
    share
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()
        .map_err(err)?;

    let max = o
        .counts
        .iter()
        .map(|r| r.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut volume = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0u32..n.max(2) - 1).into_segmented(), 0f64..max * 1.1)
        .map_err(err)?;
    volume
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.min(200) as usize)
        .x_label_formatter(&fmt_x)
        .y_desc("tweets")
        .y_labels(4)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc(o.period)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(err)?;
    volume
        .draw_series(o.counts.iter().enumerate().map(|(p, row)| {
            Rectangle::new(
                [
                    (SegmentValue::Exact(p as u32), 0.0),
                    (
                        SegmentValue::Exact(p as u32 + 1),
                        row.iter().sum::<u64>() as f64,
                    ),
                ],
                RGBColor(0x1f, 0x77, 0xb4).filled(),
            )
        }))
        .map_err(err)?;
    Ok(())
}

/// Writes the drift chart to `path` (`.svg` or `.png`).
pub fn drift(d: &Drift, path: &Path) -> anyhow::Result<()> {
    render!(path, draw_drift, d)
}

fn draw_drift<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, d: &Drift) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(&d.title, (FONT, 24)).map_err(err)?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2);
    let n = d.windows.len() as u32;
    let labels_every = (n as usize).div_ceil(8).max(1);
    let windows = &d.windows;
    let fmt_x = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) if (*i as usize) % labels_every == 0 => x_label(windows, v),
        _ => String::new(),
    };
    let max_psi = d
        .psi
        .iter()
        .flat_map(|l| l.values.iter().flatten())
        .fold(d.alert * 1.2, |a, &b| a.max(b * 1.1));
    let panels = [
        (&top, d.psi.as_slice(), max_psi, "PSI vs reference"),
        (
            &bottom,
            d.agreement.as_slice(),
            1.0,
            "agreement with the champion",
        ),
    ];
    for (pi, (area, lines, ymax, ydesc)) in panels.into_iter().enumerate() {
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(if pi == 1 { 40 } else { 10 })
            .y_label_area_size(70)
            .build_cartesian_2d((0u32..n.max(2) - 1).into_segmented(), 0f64..ymax)
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh()
            .y_desc(ydesc)
            .y_labels(6)
            .y_label_formatter(&|y| format!("{y:.2}"))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16));
        if pi == 1 {
            mesh.x_labels(n.min(200) as usize)
                .x_label_formatter(&fmt_x)
                .x_desc("window");
        } else {
            mesh.x_labels(n.min(200) as usize)
                .x_label_formatter(&|_| String::new());
        }
        mesh.draw().map_err(err)?;
        if pi == 0 {
            for (name, y, colour) in [
                ("watch", d.watch, RGBColor(0xff, 0x8c, 0x00)),
                ("alert", d.alert, RGBColor(0xd6, 0x27, 0x28)),
            ] {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![
                            (SegmentValue::Exact(0), y),
                            (SegmentValue::Exact(n.max(1)), y),
                        ],
                        colour.stroke_width(2),
                    )))
                    .map_err(err)?
                    .label(format!("{name} ({y})"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                    });
            }
        }
        if lines.is_empty() {
            chart
                .draw_series(std::iter::once(Text::new(
                    "no shadow deployed in these windows",
                    (SegmentValue::CenterOf(0), ymax * 0.5),
                    (FONT, 18),
                )))
                .map_err(err)?;
        }
        for (li, line) in lines.iter().enumerate() {
            let colour = palette(li);
            let points: Vec<(SegmentValue<u32>, f64)> = line
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (SegmentValue::CenterOf(i as u32), v)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(err)?
                .label(line.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, colour.filled())),
                )
                .map_err(err)?;
        }
        if !lines.is_empty() || pi == 0 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FONT, 14))
                .draw()
                .map_err(err)?;
        }
    }
    Ok(())
}
