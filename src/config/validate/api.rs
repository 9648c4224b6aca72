//! `[api]`: the operators' HTTPS interface.

use super::super::net::Host;
use super::super::raw::{RawApi, Section};
use super::super::report::Report;
use super::super::settings::Api;
use super::fields;

/// The API's port unless set: next to the health endpoints' 9453.
pub const API_PORT: u16 = 9454;

pub(super) fn api(r: &mut Report, section: &Section<RawApi>) -> Option<Api> {
    let raw = section.value.as_ref()?;
    let before = r.count();
    let enabled = raw.enabled.as_ref().is_none_or(|v| *v.get_ref());
    let port = fields::port(r, &raw.port, "api.port", API_PORT);
    let address = raw
        .address
        .as_ref()
        .and_then(|a| fields::parsed::<Host>(r, a, "api.address"));
    let path = |r: &mut Report, v: &Option<super::super::raw::Str>, f: &str| {
        v.as_ref().and_then(|v| fields::abs_path(r, v, f))
    };
    let cert = path(r, &raw.cert, "api.cert");
    let key = path(r, &raw.key, "api.key");
    match (&raw.cert, &raw.key) {
        (Some(v), None) => r.error("api.cert", Some(v.span()), "needs api.key too"),
        (None, Some(v)) => r.error("api.key", Some(v.span()), "needs api.cert too"),
        _ => {}
    }
    (r.count() == before).then(|| Api {
        enabled,
        address,
        port: port.expect("validated"),
        cert: cert.zip(key),
    })
}
