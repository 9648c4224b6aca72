//! A short human-readable description of validated settings, for `config check` and logs.

use std::fmt::Write;

use super::settings::{Failover, Quorum, Settings};

impl Settings {
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let c = &self.cluster;
        let _ = writeln!(out, "cluster {}", c.name);
        for node in &self.nodes {
            let paths: Vec<String> = node.heartbeat.iter().map(|h| h.to_string()).collect();
            let preferred = if c.preferred_primary.as_deref() == Some(&node.name) {
                ", preferred primary"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  node {} at {} (heartbeat via {}){preferred}",
                node.name,
                node.address,
                paths.join(", ")
            );
        }
        let quorum = match &c.quorum {
            Quorum::None => "none (a node that loses its peer serves alone)".to_string(),
            Quorum::Ping(ips) => format!("ping {}", join(ips)),
            Quorum::Witness(w) => format!("witness {w}"),
            Quorum::Etcd(e) => format!("etcd {}", join(&e.urls)),
        };
        let _ = writeln!(out, "  quorum: {quorum}");
        let _ = writeln!(
            out,
            "  maintenance: reported as overdue after {} s",
            c.maintenance_alert_after.as_secs()
        );
        let h = &self.heartbeat;
        let _ = writeln!(
            out,
            "  heartbeat: port {}, every {} ms, peer lost after {} ms",
            h.port,
            h.interval.as_millis(),
            h.timeout.as_millis()
        );
        let rep = &self.replication;
        let _ = writeln!(
            out,
            "  replication: port {}, {} KiB chunks, compression {}",
            rep.port,
            rep.chunk_size / 1024,
            rep.compression
        );
        for m in &self.modules {
            let dirs: Vec<String> = m.dirs.iter().map(|d| d.display().to_string()).collect();
            let failover = match &m.failover {
                Failover::Vip {
                    addresses,
                    interface,
                    ..
                } => {
                    let on = interface
                        .as_ref()
                        .map(|i| format!(" on {i}"))
                        .unwrap_or_default();
                    format!("vip {}{on}", join(addresses))
                }
                Failover::Lb { port, tls } => format!(
                    "load balancer health on port {port}{}",
                    if *tls { " (https)" } else { "" }
                ),
            };
            let _ = writeln!(out, "  module {}: {}", m.name, dirs.join(", "));
            let checks: Vec<&str> = m.checkers.iter().map(|c| c.check.kind()).collect();
            let checks = if checks.is_empty() {
                String::new()
            } else {
                format!(", checks {}", checks.join(", "))
            };
            let _ = writeln!(out, "    ack {}, failover {failover}{checks}", m.ack);
        }
        out
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
