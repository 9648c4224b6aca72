//! A TCP relay that holds every chunk for a fixed time in each direction:
//! the link of a LAN, where the round trip and not the shared disk decides,
//! on a machine whose kernel has no netem. Standard library only; the
//! replication benchmark builds it with rustc.
//!
//!     delay_relay LISTEN TARGET ONE_WAY_MICROS
//!
//! Each accepted connection is forwarded to TARGET (from 127.0.0.1). The
//! relay's own hand-off between threads adds to the delay: the benchmark
//! also measures it with a delay of 0.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// SAFETY: this is prctl(2) as the C library declares it: `int prctl(int option, ...)`.
unsafe extern "C" {
    fn prctl(option: i32, ...) -> i32;
}

/// PR_SET_TIMERSLACK: sleeps end within a microsecond of when they should.
const PR_SET_TIMERSLACK: i32 = 29;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: delay_relay LISTEN TARGET ONE_WAY_MICROS");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN: an address:port");
    let target: SocketAddr = args[2].parse().expect("TARGET: an address:port");
    let delay = Duration::from_micros(args[3].parse().expect("ONE_WAY_MICROS: a number"));
    let listener = TcpListener::bind(listen).expect("cannot listen");
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect(target) else {
                return;
            };
            for s in [&client, &server] {
                let _ = s.set_nodelay(true);
            }
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let a = std::thread::spawn(move || pipe(client, server, delay));
            pipe(s2, c2, delay);
            let _ = a.join();
        });
    }
}

/// Forwards `from` to `to`, each chunk `delay` after it arrived.
fn pipe(mut from: TcpStream, to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut out = to.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // SAFETY: PR_SET_TIMERSLACK takes one unsigned long (u64 on 64-bit Linux) and no pointer;
        // it only sets this thread's timer slack.
        unsafe { prctl(PR_SET_TIMERSLACK, 1u64) };
        for (at, chunk) in rx {
            let due = at + delay;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if out.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = out.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = to.shutdown(Shutdown::Both);
}
