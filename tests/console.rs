//! The web console in a real browser (Debian's headless Chromium driven
//! through chromedriver's WebDriver protocol), on a phone-sized window:
//! log in with a token, see both nodes, press swap, read the confirmation,
//! confirm, and see the states change on both nodes; take a snapshot, see
//! it listed, restore it. A screenshot is kept under the build directory.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::{Cluster, Options};
use common::{free_port, wait_until};
use serde_json::{Value, json};

/// chromedriver, stopped with the test.
struct Driver {
    child: Child,
    base: String,
    session: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Driver {
    fn start() -> Driver {
        let port = free_port(false);
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) must be installed: run scripts/install-deps.sh");
        let mut d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}/session"),
            session: String::new(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: tandem::webclient::client(None, None).unwrap(),
        };
        assert!(
            wait_until(20, || std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()),
            "chromedriver did not start"
        );
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The cluster's own CA signed the node's certificate.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=390,844",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-default-apps", "--disable-sync", "--disable-extensions",
                    "--disable-domain-reliability", "--metrics-recording-only",
                    // Anything but loopback goes to a port nobody listens on.
                    "--proxy-server=http://127.0.0.1:9"
                ]
            }
        }}});
        let r = d.call("POST", "__new", Some(caps));
        d.session = r["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        d
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if path == "__new" {
            self.base.clone()
        } else {
            format!("{}/{}{path}", self.base, self.session)
        };
        self.rt.block_on(async {
            let mut r = self
                .http
                .request(method.parse().unwrap(), url)
                .timeout(Duration::from_secs(60));
            if let Some(b) = body {
                r = r.json_body(b);
            }
            let a = r.send().await.unwrap();
            let v: Value = serde_json::from_str(&a.text().await.unwrap()).unwrap();
            v["value"].clone()
        })
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn wait_js(&self, secs: u64, script: &str) -> bool {
        wait_until(secs, || self.js(script) == true)
    }
}

/// `reqwest` here carries no JSON feature: bodies are set by hand.
trait JsonBody {
    fn json_body(self, v: Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}

#[test]
fn an_operator_swaps_from_the_console_on_a_phone_sized_screen() {
    let c = Cluster::build_opts(
        None,
        &Options {
            quorum: "none",
            api: true,
            replication_extra: "resync_max_rate = \"4MiB\"",
            ..Options::default()
        },
    );
    let mut c = c;
    c.start_both(30);
    let o = c.tandem(1, &["token", "create", "alice", "--role", "admin"]);
    assert!(o.status.success());
    let token = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let port = c.api.unwrap()[0];

    let d = Driver::start();
    d.call(
        "POST",
        "/url",
        Some(json!({"url": format!("https://127.0.0.1:{port}/")})),
    );
    // Without a token, nothing but the login form.
    assert!(d.wait_js(
        10,
        "return document.getElementById('login').style.display !== 'none'"
    ));
    let field = d.find("#token");
    d.call(
        "POST",
        &format!("/element/{field}/value"),
        Some(json!({"text": token})),
    );
    d.click("#login button[type=submit]");

    // Both nodes, side by side or stacked, each module in its colour.
    let states = "return Array.from(document.querySelectorAll('.module'))\
                  .map(m => m.dataset.node + '=' + m.dataset.state + ':' + m.className).join(' ')";
    assert!(
        wait_until(15, || {
            let s = d.js(states).as_str().unwrap_or_default().to_string();
            s.contains("node1=PRIM:module green") && s.contains("node2=SECOND:module green")
        }),
        "the console does not show both nodes: {}",
        d.js(states)
    );
    assert_eq!(
        d.js("return document.documentElement.scrollWidth <= window.innerWidth"),
        true,
        "the page is wider than a phone's screen"
    );

    // Swap: the confirmation says what will happen, then it happens.
    d.click(".module[data-node=node1] button[data-command=swap]");
    let what = d.js("return document.getElementById('confirm-what').textContent");
    assert_eq!(
        what.as_str().unwrap(),
        "swap: the application stops on node1 and starts on node2; clients move to node2."
    );
    d.click("#confirm-yes");
    assert!(
        wait_until(30, || {
            let s = d.js(states).as_str().unwrap_or_default().to_string();
            s.contains("node1=SECOND") && s.contains("node2=PRIM")
        }),
        "the console never showed the swap: {}\n{}",
        d.js(states),
        c.log_text(1)
    );
    c.wait_states("SECOND", "PRIM", 30);
    assert!(
        d.wait_js(
            15,
            "return document.getElementById('timeline').textContent.includes('node2')"
        ),
        "the history does not show the swap"
    );

    // Maintenance, switched on the command line: a banner over the page and
    // a badge on every module, gone once it is switched off on the page.
    let o = c.tandem(2, &["maintenance", "on"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let banner = "const b = document.getElementById('maintenance-banner'); \
                  return b.offsetHeight > 0 && b.getBoundingClientRect().top >= 0 \
                  && b.textContent.includes('MAINTENANCE: automatic failover off for every module') \
                  && b.textContent.includes('(set on node2)')";
    assert!(
        d.wait_js(15, banner),
        "no maintenance banner: {}",
        d.js("return document.getElementById('maintenance-banner').outerHTML")
    );
    assert!(d.wait_js(
        15,
        "return document.querySelectorAll('.module .badge').length === 2"
    ));
    // Scrolled to the bottom, the banner still shows.
    d.js("window.scrollTo(0, document.body.scrollHeight); return true");
    assert_eq!(
        d.js(
            "const r = document.getElementById('maintenance-banner').getBoundingClientRect(); \
              return r.top >= 0 && r.bottom <= window.innerHeight && r.height > 0"
        ),
        true,
        "the banner scrolled out of sight"
    );
    d.js("window.scrollTo(0, 0); return true");
    assert_eq!(
        d.js("return document.documentElement.scrollWidth <= window.innerWidth"),
        true,
        "the banner makes the page wider than a phone's screen"
    );
    let shot = d.call("GET", "/screenshot", None);
    let png = base64_decode(shot.as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"));
    let dir = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("console.png");
    std::fs::write(&file, png).unwrap();
    eprintln!("screenshot: {}", file.display());

    d.click("#maintenance-end");
    let what = d.js("return document.getElementById('confirm-what').textContent");
    assert!(
        what.as_str()
            .unwrap()
            .starts_with("maintenance off for every module"),
        "{what}"
    );
    d.click("#confirm-yes");
    assert!(
        d.wait_js(
            15,
            "return document.getElementById('maintenance-banner').offsetHeight === 0"
        ),
        "the banner stayed after maintenance was switched off"
    );
    assert!(wait_until(10, || (1..=2).all(
        |n| c.status(n).unwrap()["modules"][0]["cluster"]["maintenance"]["on"] == false
    )));

    // A snapshot taken from the page on node1 (the SECOND now), listed
    // with its facts, then restored into a new directory there.
    d.js(
        "const s = document.getElementById('snap-node'); s.value = 'node1'; \
         s.dispatchEvent(new Event('change')); return true",
    );
    let field = d.find("#snap-name");
    d.call(
        "POST",
        &format!("/element/{field}/value"),
        Some(json!({"text": "from-console"})),
    );
    d.click("#snap-create button[type=submit]");
    let what = d.js("return document.getElementById('confirm-what').textContent");
    assert!(
        what.as_str()
            .unwrap()
            .starts_with("snapshot: node1 takes a snapshot named from-console of app now"),
        "{what}"
    );
    d.click("#confirm-yes");
    let row = "const r = document.querySelector('#snap-list tr[data-name=\"from-console\"]'); \
               return r ? Array.from(r.cells).slice(0, 7).map(c => c.textContent).join('|') : ''";
    assert!(
        wait_until(15, || {
            let r = d.js(row).as_str().unwrap_or_default().to_string();
            r.starts_with("from-console|manual|node1|") && r.contains("|consistent|")
        }),
        "the new snapshot is not listed: {} ({})",
        d.js(row),
        d.js("return document.getElementById('message').textContent")
    );
    let listed = c.ok(1, &["snapshot", "list", "app", "--json"]);
    assert!(listed.contains("\"from-console\""), "{listed}");
    assert!(
        d.wait_js(
            15,
            "return document.querySelector('.module[data-node=node1] .snapshots')\
             .textContent.includes('newest from-console')"
        ),
        "the module does not show its newest snapshot"
    );
    let to = c.path("restored-from-console");
    d.js(
        "const s = document.getElementById('snap-restore-name'); s.value = 'from-console'; \
         return true",
    );
    let field = d.find("#snap-restore-to");
    d.call(
        "POST",
        &format!("/element/{field}/value"),
        Some(json!({"text": to.to_str().unwrap()})),
    );
    d.click("#snap-restore button[type=submit]");
    d.click("#confirm-yes");
    assert!(
        wait_until(15, || to.is_dir()
            && std::fs::read_dir(&to).unwrap().next().is_some()),
        "nothing restored into {}: {}",
        to.display(),
        d.js("return document.getElementById('message').textContent")
    );
    assert_eq!(
        d.js("return document.documentElement.scrollWidth <= window.innerWidth"),
        true,
        "the snapshots make the page wider than a phone's screen"
    );

    // A resync, paused, uncapped and resumed from the page (node1's: it
    // stays up): node1 serves again, node2 is away while node1 takes 48
    // MiB, 12 s at the 4 MiB/s cap.
    c.ok(1, &["swap", "app"]);
    c.wait_states("PRIM", "SECOND", 30);
    c.signal(2, libc::SIGKILL);
    let replication = |c: &Cluster| c.status(1).unwrap()["modules"][0]["replication"].clone();
    assert!(wait_until(10, || replication(&c)["peer"] != "connected"));
    for i in 0..3u64 {
        std::fs::write(
            c.path(&format!("node1/app/big{i}")),
            common::noise(i, 16 << 20),
        )
        .unwrap();
    }
    c.start(2);
    assert!(
        wait_until(30, || replication(&c)["resync"]["running"] == true),
        "no resync: {}",
        replication(&c)
    );
    let card = "const e = document.querySelector('.module[data-node=node1] .resync'); \
                return e ? e.dataset.state + '|' + e.textContent.replace(/\\s+/g, ' ') : ''";
    assert!(
        wait_until(15, || d
            .js(card)
            .as_str()
            .unwrap_or_default()
            .contains("at most 4.0 MiB/s")),
        "the resync is not shown: {}\n{}\n{}",
        d.js(card),
        d.js("return document.querySelector('.module[data-node=node1]').outerHTML"),
        replication(&c)
    );
    let press = |command: &str, says: &str| {
        let button = format!(".module[data-node=node1] button[data-command={command}]");
        assert!(
            d.wait_js(15, &format!("return !!document.querySelector('{button}')")),
            "no {command} button"
        );
        d.click(&button);
        let what = d.js("return document.getElementById('confirm-what').textContent");
        assert!(what.as_str().unwrap().starts_with(says), "{what}");
        d.click("#confirm-yes");
    };
    press(
        "resync-pause",
        "pause the resync of app: node1 ships nothing more to node2",
    );
    assert!(
        wait_until(15, || d
            .js(card)
            .as_str()
            .unwrap_or_default()
            .starts_with("paused|")
            && d.js(card).as_str().unwrap_or_default().contains("PAUSED")),
        "the page does not show the pause: {} ({})",
        d.js(card),
        d.js("return document.getElementById('message').textContent")
    );
    assert_eq!(replication(&c)["resync"]["paused"], true);
    d.js("window.tandemRate = 0; return true");
    press(
        "resync-rate",
        "set the most the resync of app ships a second",
    );
    assert!(
        wait_until(15, || replication(&c)["resync"]["max_rate"] == 0),
        "the cap was not lifted: {}",
        d.js("return document.getElementById('message').textContent")
    );
    press("resync-resume", "resume the resync of app");
    assert!(
        wait_until(60, || {
            let r = replication(&c);
            r["peer"] == "connected" && r["dirty_bytes"] == 0
        }),
        "the resumed resync did not end: {}",
        replication(&c)
    );
    assert!(
        d.wait_js(
            15,
            "return !document.querySelector('.module[data-node=node1] .resync')"
        ),
        "the page still shows a resync"
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
