//! The control panel's files, compiled into the binary: one self-contained
//! `medfed`, no path to get wrong in a container.

pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/static/", $path)),
        }
    };
}

pub const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("js/common.js", "text/javascript; charset=utf-8"),
    asset!("js/charts.js", "text/javascript; charset=utf-8"),
    asset!("js/runform.js", "text/javascript; charset=utf-8"),
    asset!("js/privacy.js", "text/javascript; charset=utf-8"),
    asset!("js/taskview.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    asset!("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
    asset!("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
];

pub fn find(path: &str) -> Option<&'static Asset> {
    let path = if path.is_empty() { "index.html" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}
