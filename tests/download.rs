//! `data download` against a small HTTP server on 127.0.0.1 (never the real sources):
//! right files, corrupt mirrors, dropped connections resumed with Range, 404s, servers
//! without Range support, and every mirror failing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use selfdistill::data::download::{
    download_dataset_with, Archive, DownloadError, FileStatus, Limits, NoProgress, RemoteFile,
    Source, CHECKSUMS_FILE,
};
use selfdistill::data::{self, DataOptions, DatasetKind};

// ---------------------------------------------------------------- the test server

/// How the server answers one path.
#[derive(Clone)]
enum Route {
    /// 200, or 206 for a `Range: bytes=N-` request.
    Full(Vec<u8>),
    /// Always 200 with the whole body; Range is ignored.
    NoRange(Vec<u8>),
    /// The first `times` requests promise the whole body but close after `cut` bytes;
    /// later ones behave like `Full`.
    Truncate {
        bytes: Vec<u8>,
        cut: usize,
        times: usize,
    },
}

/// One request as the server saw it: path and Range header.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    path: String,
    range: Option<String>,
}

/// A server that stops by itself: after `MAX_CONNECTIONS`, after `LIFETIME`, or when dropped.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const MAX_CONNECTIONS: usize = 100;
const LIFETIME: Duration = Duration::from_secs(60);

impl Server {
    fn start(routes: Vec<(&str, Route)>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: HashMap<String, Route> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut served: HashMap<String, usize> = HashMap::new();
            let mut connections = 0;
            while !stop2.load(Ordering::Relaxed)
                && started.elapsed() < LIFETIME
                && connections < MAX_CONNECTIONS
            {
                match listener.accept() {
                    Ok((stream, _)) => {
                        connections += 1;
                        handle(stream, &routes, &mut served, &seen2);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, mirror: &str) -> String {
        format!("http://127.0.0.1:{}/{mirror}/", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(
    stream: TcpStream,
    routes: &HashMap<String, Route>,
    served: &mut HashMap<String, usize>,
    seen: &Mutex<Vec<Seen>>,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let count = served.entry(path.clone()).or_insert(0);
    *count += 1;
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let mut out = stream;
    let ranged = |out: &mut TcpStream, bytes: &[u8]| match start {
        Some(s) if s < bytes.len() => respond(
            out,
            "206 Partial Content",
            &[(
                "Content-Range",
                format!("bytes {s}-{}/{}", bytes.len() - 1, bytes.len()),
            )],
            &bytes[s..],
            None,
        ),
        Some(_) => respond(out, "416 Range Not Satisfiable", &[], b"", None),
        None => respond(out, "200 OK", &[], bytes, None),
    };
    match routes.get(&path) {
        None => respond(&mut out, "404 Not Found", &[], b"not here", None),
        Some(Route::Full(bytes)) => ranged(&mut out, bytes),
        Some(Route::NoRange(bytes)) => respond(&mut out, "200 OK", &[], bytes, None),
        Some(Route::Truncate { bytes, cut, times }) => {
            if *count <= *times {
                respond(&mut out, "200 OK", &[], bytes, Some(*cut));
            } else {
                ranged(&mut out, bytes);
            }
        }
    }
}

/// Writes a response promising `body.len()` bytes; sends only `cut` of them when given.
fn respond(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    cut: Option<usize>,
) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\nAccept-Ranges: bytes\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let n = cut.unwrap_or(body.len()).min(body.len());
    let _ = out.write_all(&body[..n]);
    let _ = out.flush();
    let _ = out.shutdown(std::net::Shutdown::Both);
}

// ---------------------------------------------------------------- fixtures

const PX: usize = 28 * 28;

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_images(count: usize, seed: u8) -> Vec<u8> {
    let mut b = 0x0803u32.to_be_bytes().to_vec();
    for v in [count as u32, 28, 28] {
        b.extend(v.to_be_bytes());
    }
    b.extend((0..count * PX).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)));
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = 0x0801u32.to_be_bytes().to_vec();
    b.extend((labels.len() as u32).to_be_bytes());
    b.extend(labels);
    b
}

/// The four gzipped MNIST files: 5 training and 3 test images.
fn mnist_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("train-images-idx3-ubyte.gz", gz(&idx_images(5, 1))),
        (
            "train-labels-idx1-ubyte.gz",
            gz(&idx_labels(&[3, 1, 4, 1, 5])),
        ),
        ("t10k-images-idx3-ubyte.gz", gz(&idx_images(3, 2))),
        ("t10k-labels-idx1-ubyte.gz", gz(&idx_labels(&[9, 2, 6]))),
    ]
}

fn md5_hex(bytes: &[u8]) -> String {
    format!("{:x}", md5::compute(bytes))
}

fn source(kind: DatasetKind, files: &[(&str, Vec<u8>)], mirrors: Vec<String>) -> Source {
    Source {
        kind,
        files: files
            .iter()
            .map(|(n, b)| RemoteFile::new(n, &md5_hex(b), Some(b.len() as u64)))
            .collect(),
        mirrors,
        archive: None,
    }
}

fn limits() -> Limits {
    Limits {
        connect_timeout: Duration::from_secs(3),
        read_timeout: Duration::from_secs(5),
        attempts_per_mirror: 3,
    }
}

/// Routes serving every file under `mirror`.
fn serve_all(mirror: &str, files: &[(&str, Vec<u8>)]) -> Vec<(String, Route)> {
    files
        .iter()
        .map(|(n, b)| (format!("/{mirror}/{n}"), Route::Full(b.clone())))
        .collect()
}

fn start(routes: Vec<(String, Route)>) -> Server {
    Server::start(
        routes
            .iter()
            .map(|(p, r)| (p.as_str(), r.clone()))
            .collect(),
    )
}

fn no_part_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".part") && !name.ends_with(".extracting"),
            "left behind: {name}"
        );
    }
}

fn assert_files_equal(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (name, bytes) in files {
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
    }
}

// ---------------------------------------------------------------- tests
#[test]
fn right_files_download_verify_load_and_are_skipped_the_second_time() {
    let files = mnist_files();
    let server = start(serve_all("m1", &files));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    let src = source(DatasetKind::Mnist, &files, vec![server.url("m1")]);
    let report = download_dataset_with(&src, &dir, &NoProgress, limits()).unwrap();
    assert_eq!((report.train_len, report.test_len), (5, 3));
    assert!(report
        .files
        .iter()
        .all(|f| f.status == FileStatus::Downloaded));
    assert_files_equal(&dir, &files);
    no_part_files(&dir);

    // CHECKSUMS: MD5 and SHA-256 of every file, in `cksum -c` format.
    let sums = std::fs::read_to_string(dir.join(CHECKSUMS_FILE)).unwrap();
    for (f, (name, bytes)) in report.files.iter().zip(&files) {
        assert_eq!(f.sha256.len(), 64);
        assert!(
            sums.contains(&format!("MD5 ({name}) = {}", md5_hex(bytes))),
            "{sums}"
        );
        assert!(
            sums.contains(&format!("SHA256 ({name}) = {}", f.sha256)),
            "{sums}"
        );
    }

    // The loaders find it where it was put.
    let loaded = data::load(
        DatasetKind::Mnist,
        &DataOptions {
            data_dir: Some(tmp.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(loaded.train.labels, vec![3, 1, 4, 1, 5]);

    let requests = server.seen().len();
    assert_eq!(requests, 4);
    let again = download_dataset_with(&src, &dir, &NoProgress, limits()).unwrap();
    assert!(again
        .files
        .iter()
        .all(|f| f.status == FileStatus::AlreadyPresent));
    assert_eq!(server.seen().len(), requests, "nothing fetched again");
}

#[test]
fn corrupt_mirror_falls_through_to_the_next_one() {
    let files = mnist_files();
    let mut routes = serve_all("good", &files);
    let mut bad = files[0].1.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    routes.push((format!("/bad/{}", files[0].0), Route::Full(bad)));
    let server = start(routes);
    let tmp = tempfile::tempdir().unwrap();
    let src = source(
        DatasetKind::Mnist,
        &files,
        vec![server.url("bad"), server.url("good")],
    );
    let report = download_dataset_with(&src, tmp.path(), &NoProgress, limits()).unwrap();
    assert_files_equal(tmp.path(), &files);
    assert_eq!(
        report.files[0].url.as_deref(),
        Some(format!("{}{}", server.url("good"), files[0].0).as_str())
    );
    let seen = server.seen();
    assert_eq!(seen[0].path, format!("/bad/{}", files[0].0));
    assert_eq!(seen[1].path, format!("/good/{}", files[0].0));
    no_part_files(tmp.path());
}

#[test]
fn wrong_checksum_everywhere_names_file_expected_and_actual() {
    let files = mnist_files();
    let mut routes = serve_all("m1", &files);
    let mut bad = files[1].1.clone();
    bad.push(0);
    let bad_md5 = md5_hex(&bad);
    routes.retain(|(p, _)| !p.ends_with(files[1].0));
    routes.push((format!("/m1/{}", files[1].0), Route::Full(bad)));
    let server = start(routes);
    let tmp = tempfile::tempdir().unwrap();
    let mut src = source(DatasetKind::Mnist, &files, vec![server.url("m1")]);
    src.files[1].size = None; // let the longer file through to the checksum
    let err = download_dataset_with(&src, tmp.path(), &NoProgress, limits()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DownloadError::Unavailable { .. }), "{msg}");
    assert!(msg.contains(files[1].0), "{msg}");
    assert!(msg.contains(&md5_hex(&files[1].1)), "expected md5: {msg}");
    assert!(msg.contains(&bad_md5), "actual md5: {msg}");
    assert!(!tmp.path().join(files[1].0).exists());
    no_part_files(tmp.path());
    // The good files were kept.
    assert!(tmp.path().join(files[0].0).is_file());
}

#[test]
fn dropped_connection_is_resumed_with_a_range_request() {
    let files = mnist_files();
    let mut routes = serve_all("m1", &files);
    let (name, bytes) = (&files[0].0, files[0].1.clone());
    let cut = bytes.len() / 3;
    routes.retain(|(p, _)| !p.ends_with(name));
    routes.push((
        format!("/m1/{name}"),
        Route::Truncate {
            bytes,
            cut,
            times: 1,
        },
    ));
    let server = start(routes);
    let tmp = tempfile::tempdir().unwrap();
    let src = source(DatasetKind::Mnist, &files, vec![server.url("m1")]);
    download_dataset_with(&src, tmp.path(), &NoProgress, limits()).unwrap();
    assert_files_equal(tmp.path(), &files);
    no_part_files(tmp.path());
    let for_file: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.path.ends_with(name))
        .collect();
    assert_eq!(for_file.len(), 2, "{for_file:?}");
    assert_eq!(for_file[0].range, None);
    assert_eq!(for_file[1].range, Some(format!("bytes={cut}-")));
}

#[test]
fn a_part_left_by_an_earlier_run_is_resumed() {
    let files = mnist_files();
    let server = start(serve_all("m1", &files));
    let tmp = tempfile::tempdir().unwrap();
    let (name, bytes) = (&files[0].0, &files[0].1);
    let half = bytes.len() / 2;
    std::fs::write(tmp.path().join(format!("{name}.part")), &bytes[..half]).unwrap();
    let src = source(DatasetKind::Mnist, &files, vec![server.url("m1")]);
    download_dataset_with(&src, tmp.path(), &NoProgress, limits()).unwrap();
    assert_files_equal(tmp.path(), &files);
    let first = &server.seen()[0];
    assert_eq!(first.range, Some(format!("bytes={half}-")));
}

#[test]
fn server_without_range_support_restarts_from_zero() {
    let files = mnist_files();
    let routes: Vec<(String, Route)> = files
        .iter()
        .map(|(n, b)| (format!("/m1/{n}"), Route::NoRange(b.clone())))
        .collect();
    let server = start(routes);
    let tmp = tempfile::tempdir().unwrap();
    let name = files[0].0;
    // A stale part with wrong bytes: appending to it would corrupt the file.
    std::fs::write(tmp.path().join(format!("{name}.part")), vec![0xaa; 100]).unwrap();
    let src = source(DatasetKind::Mnist, &files, vec![server.url("m1")]);
    download_dataset_with(&src, tmp.path(), &NoProgress, limits()).unwrap();
    assert_files_equal(tmp.path(), &files);
    no_part_files(tmp.path());
    assert!(server.seen()[0].range.is_some(), "it asked to resume");
}

#[test]
fn truncated_by_a_server_without_range_support_still_completes() {
    let files = mnist_files();
    let mut routes: Vec<(String, Route)> = files
        .iter()
        .map(|(n, b)| (format!("/m1/{n}"), Route::NoRange(b.clone())))
        .collect();
    // Two mirrors: the first always cuts the file short, the second ignores Range.
    routes.push((
        format!("/cut/{}", files[0].0),
        Route::Truncate {
            bytes: files[0].1.clone(),
            cut: files[0].1.len() / 2,
            times: usize::MAX,
        },
    ));
    let server = start(routes);
    let tmp = tempfile::tempdir().unwrap();
    let mut src = source(
        DatasetKind::Mnist,
        &files,
        vec![server.url("cut"), server.url("m1")],
    );
    src.files.truncate(1);
    let err = download_dataset_with(&src, tmp.path(), &NoProgress, limits());
    // Only one file in the source, so loading fails after a successful download:
    // what matters here is the file itself.
    assert!(matches!(err, Err(DownloadError::Load(_))), "{err:?}");
    assert_files_equal(tmp.path(), &files[..1]);
    no_part_files(tmp.path());
    let cut_requests = server
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/cut/"))
        .count();
    assert_eq!(cut_requests, limits().attempts_per_mirror as usize);
}

#[test]
fn mirror_that_404s_is_skipped() {
    let files = mnist_files();
    let server = start(serve_all("good", &files));
    let tmp = tempfile::tempdir().unwrap();
    let src = source(
        DatasetKind::Mnist,
        &files,
        vec![server.url("missing"), server.url("good")],
    );
    let report = download_dataset_with(&src, tmp.path(), &NoProgress, limits()).unwrap();
    assert_eq!(report.train_len, 5);
    assert_eq!(
        server
            .seen()
            .iter()
            .filter(|s| s.path.starts_with("/missing/"))
            .count(),
        4,
        "one try per file: a 404 is not retried"
    );
}

#[test]
fn wrong_file_under_the_final_name_is_replaced() {
    let files = mnist_files();
    let server = start(serve_all("m1", &files));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(files[2].0), b"not the file").unwrap();
    let src = source(DatasetKind::Mnist, &files, vec![server.url("m1")]);
    download_dataset_with(&src, tmp.path(), &NoProgress, limits()).unwrap();
    assert_files_equal(tmp.path(), &files);
}

#[test]
fn all_mirrors_failing_names_the_files_to_place_by_hand() {
    let files = mnist_files();
    let server = start(Vec::new()); // every path 404s
                                    // A port nobody listens on.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = source(
        DatasetKind::FashionMnist,
        &files,
        vec![format!("http://127.0.0.1:{closed}/"), server.url("nothing")],
    );
    let started = Instant::now();
    let err = download_dataset_with(&src, tmp.path(), &NoProgress, limits()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30));
    let msg = err.to_string();
    assert!(matches!(err, DownloadError::Unavailable { .. }), "{msg}");
    for (name, bytes) in &files {
        assert!(msg.contains(name), "{msg}");
        assert!(msg.contains(&md5_hex(bytes)), "{msg}");
    }
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    assert!(msg.contains("HTTP 404"), "{msg}");
    assert!(
        msg.contains("apt-get install dataset-fashion-mnist"),
        "{msg}"
    );
    no_part_files(tmp.path());
}

/// `n` CIFAR-10 records with labels cycling from `first`.
fn cifar_records(n: usize, first: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let mut rec = vec![((first + i) % 10) as u8];
            rec.extend((0..3072).map(|p| (p as u8).wrapping_add(i as u8)));
            rec
        })
        .collect()
}

fn cifar10_tar_gz() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, bytes).unwrap();
    };
    for k in 1..=5 {
        add(
            &format!("cifar-10-batches-bin/data_batch_{k}.bin"),
            &cifar_records(3, k),
        );
    }
    add("cifar-10-batches-bin/test_batch.bin", &cifar_records(2, 0));
    let names: String = (0..10).map(|i| format!("class{i}\n")).collect();
    add("cifar-10-batches-bin/batches.meta.txt", names.as_bytes());
    gz(&builder.into_inner().unwrap())
}

#[test]
fn cifar_archive_is_verified_extracted_and_loads() {
    let archive = cifar10_tar_gz();
    let files = vec![("cifar-10-binary.tar.gz", archive)];
    let server = start(serve_all("kriz", &files));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar10");
    let mut src = source(DatasetKind::Cifar10, &files, vec![server.url("kriz")]);
    src.archive = Some(Archive::TarGz);
    let report = download_dataset_with(&src, &dir, &NoProgress, limits()).unwrap();
    assert_eq!((report.train_len, report.test_len), (15, 2));
    assert!(dir.join("cifar-10-batches-bin/data_batch_5.bin").is_file());
    no_part_files(&dir);
    let loaded = data::load(
        DatasetKind::Cifar10,
        &DataOptions {
            data_dir: Some(tmp.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(loaded.class_names[3], "class3");

    let again = download_dataset_with(&src, &dir, &NoProgress, limits()).unwrap();
    assert_eq!(again.files[0].status, FileStatus::AlreadyPresent);
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn archive_escaping_its_folder_is_refused() {
    // A hand-made tar whose entry name climbs out with `..`.
    let mut header = tar::Header::new_gnu();
    let body = b"evil";
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    {
        let name = b"../escaped.bin";
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
    }
    header.set_cksum();
    let mut raw = header.as_bytes().to_vec();
    raw.extend(body);
    raw.resize(raw.len().div_ceil(512) * 512, 0);
    raw.extend(vec![0u8; 1024]);
    let files = vec![("cifar-10-binary.tar.gz", gz(&raw))];
    let server = start(serve_all("kriz", &files));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("inner");
    let mut src = source(DatasetKind::Cifar10, &files, vec![server.url("kriz")]);
    src.archive = Some(Archive::TarGz);
    let err = download_dataset_with(&src, &dir, &NoProgress, limits()).unwrap_err();
    assert!(!tmp.path().join("escaped.bin").exists());
    assert!(
        matches!(err, DownloadError::Archive { .. } | DownloadError::Load(_)),
        "{err}"
    );
}

#[test]
fn server_drains_and_stops_by_itself() {
    // Read a 404 by hand to check the helper, then make sure dropping it joins the thread.
    let server = start(Vec::new());
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    drop(server);
}
