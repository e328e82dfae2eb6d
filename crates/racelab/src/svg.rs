//! One SVG timeline per scenario, written by hand: one lane per handler,
//! each request a bar from its send to its reply (driver clock; a thin white
//! edge separates requests sent one after the other), the time
//! PHP waited for the session hatched, failed requests in red.

use std::fmt::Write as _;

use crate::report::Cell;
use crate::scenario::{Role, Scenario};

const WIDTH: f64 = 1000.0;
const LABEL_W: f64 = 210.0;
const PLOT_W: f64 = WIDTH - LABEL_W - 20.0;
const ROW_H: f64 = 7.0;
const ROW_GAP: f64 = 2.0;
const GROUP_PAD: f64 = 10.0;
const TOP: f64 = 58.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(role: Role) -> &'static str {
    match role {
        Role::Slow => "#8c6bb1",
        Role::Fast => "#41ab5d",
        Role::Normal => "#4292c6",
    }
}

/// A round step for the time axis: about 8 ticks.
fn tick_step(max_ms: f64) -> f64 {
    let raw = max_ms / 8.0;
    [
        50.0, 100.0, 200.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
    ]
    .into_iter()
    .find(|s| *s >= raw)
    .unwrap_or(20000.0)
}

pub fn timeline(scenario: Scenario, cells: &[&Cell]) -> String {
    let max_ms = cells
        .iter()
        .filter_map(|c| c.first_run.as_ref())
        .map(|r| r.wall_ms)
        .fold(100.0, f64::max);
    let step = tick_step(max_ms);
    let span = (max_ms / step).ceil() * step;
    let x = |ms: f64| LABEL_W + ms.max(0.0) / span * PLOT_W;

    let mut body = String::new();
    let mut y = TOP;
    for c in cells {
        let Some(run) = &c.first_run else { continue };
        let rows = run.results.iter().map(|r| r.lane + 1).max().unwrap_or(1);
        let h = rows as f64 * (ROW_H + ROW_GAP) - ROW_GAP;
        // The picture shows the first iteration, so its label gives that
        // run's own counts, not the cell's sums over every iteration.
        let m = scenario.evaluate(run);
        let failed = run.results.iter().filter(|r| !r.ok()).count();
        let (verdict, verdict_color) = if !m.data_correct() {
            ("WRONG", "#d73027")
        } else if failed > 0 {
            ("ERRORS", "#f46d43")
        } else {
            ("ok", "#1a9850")
        };
        let mut what = vec![verdict.to_string()];
        for (n, label) in [
            (m.lost_updates, "lost"),
            (m.duplicates, "dup"),
            (m.relogins, "relogin"),
            (m.wrong_reads, "misread"),
            (failed as u64, "failed"),
        ] {
            if n > 0 {
                what.push(format!("{n} {label}"));
            }
        }
        let _ = write!(
            body,
            r##"<rect x="0" y="{:.1}" width="{WIDTH}" height="{:.1}" fill="#f7f7f7"/>"##,
            y - GROUP_PAD / 2.0,
            h + GROUP_PAD
        );
        let _ = write!(
            body,
            r##"<text x="8" y="{:.1}" class="h">{}</text><text x="8" y="{:.1}" class="v" fill="{verdict_color}">{}</text>"##,
            y + h / 2.0 - 2.0,
            esc(&c.handler),
            y + h / 2.0 + 10.0,
            what.join(" · ")
        );
        for r in &run.results {
            let ry = y + r.lane as f64 * (ROW_H + ROW_GAP);
            let (x0, x1) = (x(r.start_ms), x(r.end_ms));
            let failed = !r.ok();
            let fill = if failed { "#e34a33" } else { color(r.role) };
            let mut tip = format!(
                "{} {} {:.0}–{:.0} ms ({:.0} ms), waited {:.0} ms",
                r.ep,
                r.params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                r.start_ms,
                r.end_ms,
                r.duration_ms(),
                r.wait_ms().unwrap_or(0.0)
            );
            if let Some(e) = r.error_text() {
                let _ = write!(tip, " — {e}");
            }
            let _ = write!(
                body,
                r##"<rect x="{x0:.1}" y="{ry:.1}" width="{:.1}" height="{ROW_H}" fill="{fill}" stroke="#fff" stroke-width="0.6"><title>{}</title></rect>"##,
                (x1 - x0).max(1.0),
                esc(&tip)
            );
            for w in r.waits_on_driver_clock() {
                let (w0, w1) = (x(w[0]), x(w[1]));
                if w1 - w0 >= 0.5 {
                    let _ = write!(
                        body,
                        r##"<rect x="{w0:.1}" y="{ry:.1}" width="{:.1}" height="{ROW_H}" fill="url(#wait)"/>"##,
                        w1 - w0
                    );
                }
            }
        }
        y += h + GROUP_PAD * 1.6;
    }

    let height = y + 24.0;
    let mut axis = String::new();
    let mut t = 0.0;
    while t <= span + 0.5 {
        let tx = x(t);
        let _ = write!(
            axis,
            r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{:.1}" class="t">{t:.0}</text>"##,
            TOP - 8.0,
            y - GROUP_PAD,
            y + 6.0
        );
        t += step;
    }
    let legend = [
        ("#8c6bb1", "slow request"),
        ("#41ab5d", "fast request"),
        ("#4292c6", "request"),
        ("#e34a33", "failed"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (c, l))| {
        let lx = LABEL_W + i as f64 * 120.0;
        format!(r##"<rect x="{lx}" y="30" width="14" height="8" fill="{c}"/><text x="{}" y="38" class="l">{l}</text>"##, lx + 18.0)
    })
    .collect::<String>();
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="sans-serif">
<defs><pattern id="wait" patternUnits="userSpaceOnUse" width="4" height="4"><rect width="4" height="4" fill="#ffffff" fill-opacity="0.55"/><path d="M0,4 L4,0" stroke="#222" stroke-width="0.9"/></pattern>
<style>.h{{font-size:12px;font-weight:bold}} .v{{font-size:10px}} .t{{font-size:10px;text-anchor:middle;fill:#555}} .l{{font-size:11px}} .title{{font-size:14px;font-weight:bold}}</style></defs>
<rect width="100%" height="100%" fill="white"/>
<text x="8" y="18" class="title">racelab: {name}</text><text x="8" y="34" class="l">first iteration</text><text x="{tx}" y="18" class="l">{desc}</text>
{legend}<rect x="{wx}" y="30" width="14" height="8" fill="#4292c6"/><rect x="{wx}" y="30" width="14" height="8" fill="url(#wait)"/><text x="{wlx}" y="38" class="l">waiting for the session</text>
{axis}{body}<text x="{unit_x}" y="{unit:.0}" class="t" style="text-anchor:end">time since the first request (ms)</text>
</svg>
"##,
        name = scenario.name(),
        tx = LABEL_W,
        desc = esc(&short(scenario)),
        wx = LABEL_W + 480.0,
        wlx = LABEL_W + 498.0,
        unit_x = LABEL_W - 40.0,
        unit = y + 6.0,
    )
}

fn short(s: Scenario) -> String {
    let d = s.describe();
    d.split(';').next().unwrap_or(&d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::CellBuilder;
    use crate::run::{Reply, ReqResult, RunResult};
    use serde_json::json;

    #[test]
    fn one_bar_per_request_and_the_wait_hatched() {
        let req = |lane, role, start: f64, end: f64, wait: [f64; 2]| ReqResult {
            lane,
            ep: "parallel",
            role,
            params: vec![("i", lane.to_string())],
            start_ms: start,
            end_ms: end,
            status: Some(200),
            reply: Some(Reply {
                ok: true,
                dur_ms: end - start,
                waits: vec![wait],
                errors: vec![],
                notes: vec![],
                conflicts: 0,
                result: json!({}),
            }),
            error: None,
        };
        let run = RunResult {
            results: vec![
                req(0, Role::Slow, 0.0, 600.0, [0.0, 1.0]),
                req(1, Role::Fast, 20.0, 700.0, [0.0, 640.0]),
            ],
            inspect: json!({"session": {"k0": "x", "k1": "y"}}),
            wall_ms: 700.0,
            sid: "s".into(),
        };
        let mut b = CellBuilder::new("files", Scenario::Parallel);
        b.add(Ok(run));
        let cell = b.finish();
        let svg = timeline(Scenario::Parallel, &[&cell]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 2, "one bar per request");
        // the legend's swatch, the fast request's 640 ms wait, the slow one's 1 ms
        assert_eq!(svg.matches(r#"fill="url(#wait)"/>"#).count(), 3);
        assert!(svg.contains(">ok<"), "both keys kept: the label says ok");
        assert_eq!(cell.held_up.map(|h| (h.held, h.overlapping)), Some((1, 1)));
    }
}
