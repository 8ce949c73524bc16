//! `chassis load --plot FILE.svg`: a latency histogram and throughput over
//! time, side by side, for people.

use std::path::Path;

use plotters::prelude::*;

use super::LoadReport;

/// Draws the report into an SVG file.
pub fn write_svg(report: &LoadReport, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(600);

    // Latency histogram: 40 buckets up to the p99 (the tail past it is one bucket).
    let top = report.latency_us.p99.max(1.0);
    let buckets = 40usize;
    let width = top / buckets as f64;
    let mut counts = vec![0u64; buckets + 1];
    for &l in &report.latencies_us {
        counts[((l / width) as usize).min(buckets)] += 1;
    }
    let highest = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&left)
        .caption("latency per run (µs)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..top + width, 0u64..highest + highest / 10 + 1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("µs (last bar: p99 and above)")
        .y_desc("runs")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x0 = i as f64 * width;
            Rectangle::new([(x0, 0), (x0 + width * 0.9, c)], BLUE.filled())
        }))
        .map_err(|e| e.to_string())?;

    // Throughput per second.
    let secs = report.throughput_by_second.len().max(1) as u64;
    let peak = report
        .throughput_by_second
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(&right)
        .caption("throughput (runs/s)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0u64..secs, 0u64..peak + peak / 10 + 1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("second")
        .y_desc("runs finished")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            report
                .throughput_by_second
                .iter()
                .enumerate()
                .map(|(i, &c)| (i as u64, c)),
            &RED,
        ))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
