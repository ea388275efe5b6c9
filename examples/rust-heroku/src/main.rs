//! A small HTTP/1.1 server laid out as apps for Heroku's Rust buildpack
//! are: the Procfile runs `./target/release/rust-heroku`. `/` answers the
//! text of `src/greeting.txt` (compiled in), with a `Date` header made by
//! the `httpdate` crate. SIGTERM stops it (default action).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::SystemTime;

const GREETING: &str = include_str!("greeting.txt");

fn handle(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers; the body of a GET is empty.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = if path == "/" {
        ("200 OK", GREETING)
    } else {
        ("404 Not Found", "not found\n")
    };
    let date = httpdate::fmt_http_date(SystemTime::now());
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nDate: {date}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .unwrap_or_else(|_| "5000".into())
        .parse()
        .expect("PORT is a port number");
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    println!("listening on {port}");
    for stream in listener.incoming() {
        let stream = stream?;
        thread::spawn(move || {
            if let Err(e) = handle(stream) {
                eprintln!("request failed: {e}");
            }
        });
    }
    Ok(())
}
