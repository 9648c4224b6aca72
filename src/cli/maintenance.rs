//! How `tandem status` says that maintenance is on: a banner for the
//! cluster before everything else, and a line in each module's details.

use crate::control::{MaintenanceStatus, Status};

fn of(m: &crate::control::ModuleStatus) -> Option<&MaintenanceStatus> {
    m.cluster
        .as_ref()
        .and_then(|c| c.maintenance.as_ref())
        .filter(|x| x.on)
}

/// "for 5 min", "for 2.5 h".
fn lasted(seconds: u64) -> String {
    match seconds {
        s if s < 90 => format!("{s} s"),
        s if s < 5400 => format!("{} min", (s + 30) / 60),
        s => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// What sets this maintenance apart: how long, overdue, a peer that has not
/// said it holds it too.
fn details(m: &MaintenanceStatus) -> String {
    let mut out = format!(
        "since {} (set on {}), for {}",
        m.since,
        m.by,
        lasted(m.seconds)
    );
    if m.overdue {
        out.push_str(&format!(
            "; OVERDUE: on longer than {}",
            lasted(m.alert_after_s)
        ));
    }
    if !m.peer_agrees {
        out.push_str("; the peer has not said it holds it: it may still take over");
    }
    out
}

/// The cluster's banner: none while no module is in maintenance.
pub(super) fn banner(st: &Status) -> Option<String> {
    let on: Vec<(&str, &MaintenanceStatus)> = st
        .modules
        .iter()
        .filter_map(|m| of(m).map(|x| (m.name.as_str(), x)))
        .collect();
    // The longest-standing one says since when.
    let (_, first) = on.iter().min_by_key(|(_, x)| x.since_ms)?;
    let which = if on.len() == st.modules.len() {
        "every module".to_string()
    } else {
        let names: Vec<&str> = on.iter().map(|(n, _)| *n).collect();
        format!("module {}", names.join(", "))
    };
    Some(format!(
        "MAINTENANCE: automatic failover off for {which} {}; `tandem maintenance off` ends it",
        details(first)
    ))
}

/// The module's line, while it is in maintenance.
pub(super) fn line(m: &crate::control::ModuleStatus) -> Option<String> {
    of(m).map(|x| {
        format!(
            "  MAINTENANCE: automatic failover off {}; commands still work",
            details(x)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ClusterModuleStatus, ModuleStatus};

    fn module(name: &str, m: Option<MaintenanceStatus>) -> ModuleStatus {
        ModuleStatus {
            name: name.into(),
            cluster: Some(ClusterModuleStatus {
                maintenance: m,
                ..ClusterModuleStatus::default()
            }),
            ..ModuleStatus::default()
        }
    }

    fn on(since_ms: u64, by: &str, seconds: u64) -> MaintenanceStatus {
        MaintenanceStatus {
            on: true,
            since: format!("t{since_ms}"),
            since_ms,
            by: by.into(),
            seconds,
            overdue: seconds >= 3600,
            alert_after_s: 3600,
            peer_agrees: true,
        }
    }

    #[test]
    fn the_banner_names_the_modules_in_maintenance_and_the_oldest_switch() {
        let mut st = Status::default();
        st.modules = vec![module("app", None), module("db", None)];
        assert_eq!(banner(&st), None);
        assert_eq!(line(&st.modules[0]), None);
        st.modules[1] = module("db", Some(on(5, "node2", 300)));
        assert_eq!(
            banner(&st).unwrap(),
            "MAINTENANCE: automatic failover off for module db since t5 (set on node2), for \
             5 min; `tandem maintenance off` ends it"
        );
        st.modules[0] = module("app", Some(on(2, "node1", 7300)));
        let b = banner(&st).unwrap();
        assert!(b.starts_with("MAINTENANCE: automatic failover off for every module since t2 (set on node1), for 2.0 h; OVERDUE"), "{b}");
        let mut lone = on(9, "node1", 10);
        lone.peer_agrees = false;
        let l = line(&module("app", Some(lone))).unwrap();
        assert!(l.contains("may still take over"), "{l}");
        assert!(line(&module("app", Some(MaintenanceStatus::default()))).is_none());
    }
}
