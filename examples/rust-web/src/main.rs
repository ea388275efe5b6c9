//! A tiny std-only HTTP/1.1 server: answers `/` on $PORT with a fixed text.
//! SIGTERM stops it (default action: there is nothing to clean up).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

const BODY: &str = "Hello from Rust on slugrunner!\n";

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
        ("200 OK", BODY)
    } else {
        ("404 Not Found", "not found\n")
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "5000".into());
    let listener = TcpListener::bind((
        "0.0.0.0",
        port.parse::<u16>().expect("PORT is a port number"),
    ))?;
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
