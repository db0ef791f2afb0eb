//! Finding the emulator programs: the Google Cloud CLI's emulators and the project-local venv.

use std::env;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Options};

/// Debian package of the Pub/Sub emulator.
pub const PUBSUB_PACKAGE: &str = "google-cloud-cli-pubsub-emulator";
/// Debian package of cbtemulator.
pub const BIGTABLE_PACKAGE: &str = "google-cloud-cli-bigtable-emulator";
/// Debian package of a Java runtime (the Pub/Sub emulator is a Java program).
pub const JAVA_PACKAGE: &str = "default-jre-headless";

/// The repository root, as seen when this crate was compiled (`CARGO_MANIFEST_DIR/../..`).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The project-local venv: `Options::venv`, else `$EMULATORS_VENV`, else `<repo>/.venv/emulators`.
pub fn venv_dir(options: &Options) -> PathBuf {
    options
        .venv
        .clone()
        .or_else(|| env::var_os("EMULATORS_VENV").map(PathBuf::from))
        .unwrap_or_else(|| repo_root().join(".venv/emulators"))
}

/// The Google Cloud CLI's root: `Options::gcloud_sdk`, else `$EMULATORS_GCLOUD_SDK`, else the
/// installation that `gcloud` on `PATH` belongs to, else `/usr/lib/google-cloud-sdk`.
pub fn gcloud_sdk(options: &Options) -> PathBuf {
    if let Some(sdk) = options
        .gcloud_sdk
        .clone()
        .or_else(|| env::var_os("EMULATORS_GCLOUD_SDK").map(PathBuf::from))
    {
        return sdk;
    }
    if let Some(gcloud) = which("gcloud") {
        // <sdk>/bin/gcloud, usually behind a /usr/bin symlink.
        if let Some(sdk) = gcloud
            .canonicalize()
            .ok()
            .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
        {
            if sdk.join("platform").is_dir() {
                return sdk;
            }
        }
    }
    PathBuf::from("/usr/lib/google-cloud-sdk")
}

/// The first executable called `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Whether `path` is an executable file.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `scripts/setup-emulators.sh` (idempotent; about 0.04 s when the venv is up to date), so that
/// `cargo test` works on a fresh clone. Its progress goes to standard error.
pub fn ensure_venv(options: &Options, venv: &Path) -> Result<(), Error> {
    let script = repo_root().join("scripts/setup-emulators.sh");
    let ready = is_executable(&venv.join("bin/bqemulator"))
        && is_executable(&venv.join("bin/fake-gcs-server"));
    if !options.run_setup || !script.is_file() {
        return if ready {
            Ok(())
        } else {
            Err(Error::Setup {
                message: format!(
                    "no emulator venv at {} (run scripts/setup-emulators.sh from the repository, or set EMULATORS_VENV)",
                    venv.display()
                ),
            })
        };
    }
    // Stream the script's progress (a cold set-up takes about 40 s) and keep its last line for
    // the error message.
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("--quiet")
        .env("EMULATORS_VENV", venv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Setup {
            message: format!("could not run {}: {e}", script.display()),
        })?;
    let mut last = String::from("no output");
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if !line.trim().is_empty() {
                last = line;
            }
        }
    }
    let status = child.wait().map_err(|e| Error::Setup {
        message: format!("waiting for {}: {e}", script.display()),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Setup {
            message: format!("scripts/setup-emulators.sh failed ({status}): {last}"),
        })
    }
}
