//! One container process: its command line, and the setup that makes the host's filesystem
//! look like the container's inside a private mount namespace.
//!
//! The process is `nsenter --net=<pod netns> unshare --mount --uts --propagation private sh -c
//! SETUP -- ARGV`: it joins the pod's network, gets its own mount and UTS namespaces (so its
//! mounts and hostname are invisible to the host and to the other containers), and the setup
//! script sets the hostname to the pod name, bind-mounts each volume at its `mountPath`
//! (read-only where the spec says), the pod's hosts file over `/etc/hosts` and its
//! `resolv.conf` (the cluster search domains and no name server: there is no cluster DNS here,
//! so a name not in the hosts file fails at once instead of timing out), remounts `/`
//! read-only for `readOnlyRootFilesystem`, changes to `workingDir` and `exec`s the container's
//! command through `setpriv` for `runAsUser`/`runAsGroup` and the capabilities the security
//! context leaves ([`crate::caps`]: bounding set, `no_new_privs`). Every step execs, so the process the
//! runner started *is* the container's process and its signals reach the app.
//!
//! A `mountPath` (or `workingDir`) the host lacks needs a directory that does not exist: instead
//! of creating it on the host, the setup mounts an overlay over its nearest existing ancestor
//! with the writable layer on a tmpfs in that namespace, so the directory exists only there.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::volumes::Mount;
use crate::Error;

/// Absolute paths of the host tools the runner uses, found once.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub nsenter: PathBuf,
    pub unshare: PathBuf,
    pub sh: PathBuf,
    pub mount: PathBuf,
    pub mkdir: PathBuf,
    pub hostname: PathBuf,
    pub setpriv: PathBuf,
    pub chroot: PathBuf,
}

impl Tools {
    /// Finds every tool on PATH (and the sbin directories a non-login PATH may lack).
    pub fn find() -> Result<Tools, Error> {
        let find = |name: &str| -> Result<PathBuf, Error> {
            let path = std::env::var("PATH").unwrap_or_default();
            let dirs: Vec<&str> = path
                .split(':')
                .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
                .collect();
            dirs.iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| Error::Host(format!("`{name}` not found (util-linux, coreutils)")))
        };
        Ok(Tools {
            nsenter: find("nsenter")?,
            unshare: find("unshare")?,
            sh: find("sh")?,
            mount: find("mount")?,
            mkdir: find("mkdir")?,
            hostname: find("hostname")?,
            setpriv: find("setpriv")?,
            chroot: find("chroot")?,
        })
    }
}

/// Everything needed to start one container.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub groups: Vec<u32>,
    pub working_dir: Option<String>,
    pub read_only_root: bool,
    /// Capabilities and `no_new_privs` from the security context ([`crate::caps`]).
    pub privileges: crate::caps::Privileges,
    pub mounts: Vec<Mount>,
    pub hosts: PathBuf,
    pub hostname: String,
    pub netns: String,
    /// The container's own scratch directory (the overlays' tmpfs is mounted here).
    pub scratch: PathBuf,
    /// The image's root filesystem when the image is mounted ([`crate::rootfs`]); `None`:
    /// the host's root seen through the container's mount namespace.
    pub root: Option<PathBuf>,
}

/// Where an image's own `setpriv` is (util-linux, in every Debian image): inside a chroot the
/// host's tools are out of reach.
const IMAGE_SETPRIV: &str = "/usr/bin/setpriv";

/// The default PATH container runtimes give a process whose image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Single-quotes `s` for the shell.
fn q(s: impl AsRef<str>) -> String {
    format!("'{}'", s.as_ref().replace('\'', "'\\''"))
}

fn qp(p: &Path) -> String {
    q(p.to_string_lossy())
}

/// Where `target` really is: its nearest existing ancestor (symlinks resolved) and the
/// missing rest. `None` for the ancestor means the path exists.
fn locate(target: &Path) -> Result<(PathBuf, Option<PathBuf>), Error> {
    for anc in target.ancestors() {
        if anc.exists() {
            let real = std::fs::canonicalize(anc)
                .map_err(crate::io_err(format!("resolve {}", anc.display())))?;
            let rest = target.strip_prefix(anc).unwrap_or(Path::new(""));
            if rest.as_os_str().is_empty() {
                return Ok((real, None));
            }
            return Ok((real.join(rest), Some(real)));
        }
    }
    Err(Error::Spec(format!("path {}", target.display())))
}

/// The setup script (see the module docs). `$@` is the container's command.
fn script(l: &Launch, t: &Tools) -> Result<String, Error> {
    if let Some(root) = &l.root {
        return root_script(l, t, root);
    }
    let mut s = String::from("set -e\n");
    s.push_str(&format!("{} {}\n", qp(&t.hostname), q(&l.hostname)));
    // Targets and whether each must be a directory (a file subPath mounts onto a file).
    let mut targets: Vec<(PathBuf, bool)> = l
        .mounts
        .iter()
        .map(|m| (m.target.clone(), m.source.is_dir()))
        .collect();
    if let Some(wd) = &l.working_dir {
        targets.push((PathBuf::from(wd), true));
    }
    let mut located = Vec::new();
    let mut overlays: Vec<PathBuf> = Vec::new();
    for (target, is_dir) in &targets {
        let (real, ancestor) = locate(target)?;
        if let Some(a) = ancestor {
            if a == Path::new("/") {
                return Err(Error::Unsupported(format!(
                    "{}: a top-level directory the host lacks (the runner does not overlay /)",
                    target.display()
                )));
            }
            overlays.push(a);
        }
        located.push((real, *is_dir, target.exists()));
    }
    overlays.sort();
    overlays.dedup();
    let tops: Vec<PathBuf> = overlays
        .iter()
        .filter(|a| !overlays.iter().any(|b| b != *a && a.starts_with(b)))
        .cloned()
        .collect();
    if !tops.is_empty() {
        let rw = l.scratch.join("rw");
        s.push_str(&format!(
            "{} -t tmpfs -o size=64m,mode=0755 tmpfs {}\n",
            qp(&t.mount),
            qp(&rw)
        ));
        for (i, a) in tops.iter().enumerate() {
            let a_str = a.to_string_lossy();
            if a_str.contains([',', ':', '\n']) {
                return Err(Error::Unsupported(format!("overlay over {a_str}")));
            }
            let (u, w) = (rw.join(format!("u{i}")), rw.join(format!("w{i}")));
            s.push_str(&format!("{} -p {} {}\n", qp(&t.mkdir), qp(&u), qp(&w)));
            s.push_str(&format!(
                "{} -t overlay overlay -o {} {}\n",
                qp(&t.mount),
                q(format!(
                    "lowerdir={a_str},upperdir={},workdir={}",
                    u.display(),
                    w.display()
                )),
                qp(a)
            ));
        }
    }
    for (real, is_dir, exists) in &located {
        if !exists {
            if *is_dir {
                s.push_str(&format!("{} -p {}\n", qp(&t.mkdir), qp(real)));
            } else if let Some(parent) = real.parent() {
                s.push_str(&format!(
                    "{} -p {}\n: > {}\n",
                    qp(&t.mkdir),
                    qp(parent),
                    qp(real)
                ));
            }
        }
    }
    for (m, (real, _, _)) in l.mounts.iter().zip(&located) {
        s.push_str(&format!(
            "{} --bind {} {}\n",
            qp(&t.mount),
            qp(&m.source),
            qp(real)
        ));
        if m.read_only {
            s.push_str(&format!(
                "{} -o remount,bind,ro {}\n",
                qp(&t.mount),
                qp(real)
            ));
        }
    }
    s.push_str(&format!(
        "{} --bind {} /etc/hosts\n",
        qp(&t.mount),
        qp(&l.hosts)
    ));
    let resolv = l.hosts.with_file_name("resolv.conf");
    s.push_str(&format!(
        "{} --bind {} /etc/resolv.conf\n",
        qp(&t.mount),
        qp(&resolv)
    ));
    if l.read_only_root {
        // The overlays made for missing mount paths are read-only too, like the rest of `/`.
        for a in tops.iter().map(|a| a.as_path()).chain([Path::new("/")]) {
            s.push_str(&format!("{} -o remount,bind,ro {}\n", qp(&t.mount), qp(a)));
        }
    }
    if let Some(wd) = &l.working_dir {
        s.push_str(&format!("cd {}\n", q(wd)));
    }
    s.push_str(&format!("exec {} \"$@\"\n", privileges(l, &t.setpriv)));
    Ok(s)
}

/// The setup script of a container whose image is mounted (see [`crate::rootfs`]): the image's
/// root bound at the container's `root` directory in its mount namespace, `/proc` and `/dev`
/// as a runtime gives them, the volumes, hosts file and `resolv.conf` mounted inside it (their
/// paths resolved in the image, whose links are its own: Debian's `/var/run` is `/run`), then
/// `chroot` and the image's `setpriv`. Mount points the image lacks are made in the working
/// container's writable layer, never on the host.
fn root_script(l: &Launch, t: &Tools, image: &Path) -> Result<String, Error> {
    let r = l.scratch.join("root");
    std::fs::create_dir_all(&r).map_err(crate::io_err(format!("create {}", r.display())))?;
    let mount = qp(&t.mount);
    let mut s = String::from("set -e\n");
    s.push_str(&format!("{} {}\n", qp(&t.hostname), q(&l.hostname)));
    s.push_str(&format!("{mount} --bind {} {}\n", qp(image), qp(&r)));
    // In the container, `p` (as it sees it) is `r` joined with where `p` resolves in the image.
    let inside = |p: &Path| -> Result<(PathBuf, bool), Error> {
        let real = crate::rootfs::resolve_in(image, p)?;
        let rel = real
            .strip_prefix(image)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        Ok((r.join(rel), real.exists()))
    };
    let (proc_dir, _) = inside(Path::new("/proc"))?;
    let (dev_dir, _) = inside(Path::new("/dev"))?;
    s.push_str(&format!(
        "{} -p {} {}\n",
        qp(&t.mkdir),
        qp(&proc_dir),
        qp(&dev_dir)
    ));
    s.push_str(&format!("{mount} -t proc proc {}\n", qp(&proc_dir)));
    s.push_str(&format!("{mount} --rbind /dev {}\n", qp(&dev_dir)));
    let mut binds: Vec<(PathBuf, PathBuf, bool, bool)> = l
        .mounts
        .iter()
        .map(|m| {
            (
                m.source.clone(),
                m.target.clone(),
                m.source.is_dir(),
                m.read_only,
            )
        })
        .collect();
    binds.push((l.hosts.clone(), "/etc/hosts".into(), false, false));
    binds.push((
        l.hosts.with_file_name("resolv.conf"),
        "/etc/resolv.conf".into(),
        false,
        false,
    ));
    for (source, target, is_dir, read_only) in binds {
        let (at, exists) = inside(&target)?;
        if !exists {
            if is_dir {
                s.push_str(&format!("{} -p {}\n", qp(&t.mkdir), qp(&at)));
            } else if let Some(parent) = at.parent() {
                s.push_str(&format!(
                    "{} -p {}\n: > {}\n",
                    qp(&t.mkdir),
                    qp(parent),
                    qp(&at)
                ));
            }
        }
        s.push_str(&format!("{mount} --bind {} {}\n", qp(&source), qp(&at)));
        if read_only {
            s.push_str(&format!("{mount} -o remount,bind,ro {}\n", qp(&at)));
        }
    }
    if l.read_only_root {
        s.push_str(&format!("{mount} -o remount,bind,ro {}\n", qp(&r)));
    }
    let setpriv = Path::new(IMAGE_SETPRIV);
    if !privileges(l, setpriv).is_empty() && !inside(setpriv)?.1 {
        return Err(Error::Unsupported(format!(
            "image {} has no {IMAGE_SETPRIV} to run as another user or limit capabilities",
            image.display()
        )));
    }
    // The working directory exists only inside the root: changed to by the image's shell.
    let cd = match &l.working_dir {
        Some(wd) => format!(
            "/bin/sh -c {} workdir ",
            q(format!("cd {} && exec \"$@\"", q(wd)))
        ),
        None => String::new(),
    };
    s.push_str(&format!(
        "exec {} {} {cd}{} \"$@\"\n",
        qp(&t.chroot),
        qp(&r),
        privileges(l, setpriv)
    ));
    Ok(s)
}

/// The `setpriv` prefix for `runAsUser`/`runAsGroup`, the capability bounding set and
/// `no_new_privs` (empty when none applies: root, every capability).
fn privileges(l: &Launch, setpriv: &Path) -> String {
    let caps = l.privileges.setpriv_args();
    if l.uid.is_none() && l.gid.is_none() && caps.is_empty() {
        return String::new();
    }
    let mut p = qp(setpriv);
    for a in caps {
        p.push(' ');
        p.push_str(&q(a));
    }
    if l.uid.is_none() && l.gid.is_none() {
        p.push_str(" --pdeathsig=keep --");
        return p;
    }
    if let Some(u) = l.uid {
        p.push_str(&format!(" --reuid={u}"));
    }
    if let Some(g) = l.gid {
        p.push_str(&format!(" --regid={g}"));
    }
    if l.groups.is_empty() {
        p.push_str(" --clear-groups");
    } else {
        let g: Vec<String> = l.groups.iter().map(u32::to_string).collect();
        p.push_str(&format!(" --groups={}", g.join(",")));
    }
    // Changing credentials clears the parent-death signal; keep it so the container still
    // dies with the runner's process.
    p.push_str(" --pdeathsig=keep --");
    p
}

/// The environment a container process gets: its own, plus PATH and HOSTNAME as runtimes add.
pub(crate) fn process_env(l: &Launch) -> Vec<(String, String)> {
    let mut env = l.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.insert(0, ("HOSTNAME".into(), l.hostname.clone()));
    }
    env
}

/// The command that starts the container (not yet spawned).
pub(crate) fn command(l: &Launch, t: &Tools) -> Result<Command, Error> {
    if l.argv.is_empty() {
        return Err(Error::Spec("container has no command".into()));
    }
    let mut c = Command::new(&t.nsenter);
    c.arg(format!("--net=/run/netns/{}", l.netns))
        .arg("--")
        .arg(&t.unshare)
        .args(["--mount", "--uts", "--propagation", "private", "--"])
        .arg(&t.sh)
        .arg("-c")
        .arg(script(l, t)?)
        .arg("container")
        .args(&l.argv)
        .env_clear()
        .envs(process_env(l));
    Ok(c)
}

/// A command run inside a running container (`kubectl exec`, exec probes): its namespaces,
/// environment, working directory and user.
pub(crate) fn exec_command(pid: u32, l: &Launch, t: &Tools, argv: &[String]) -> Command {
    let mut c = Command::new(&t.nsenter);
    c.arg(format!("--target={pid}"))
        .args(["--mount", "--net", "--uts"]);
    // In an image's root the shell and setpriv are the image's (the process's root directory).
    let setpriv = if l.root.is_some() {
        c.arg("--root");
        PathBuf::from(IMAGE_SETPRIV)
    } else {
        t.setpriv.clone()
    };
    c.arg("--");
    // The working directory may exist only in the container's mount namespace: change to it
    // from inside (nsenter's --wd opens it before entering).
    let cd = l
        .working_dir
        .as_ref()
        .map(|wd| format!("cd {} && ", q(wd)))
        .unwrap_or_default();
    let sh = if l.root.is_some() {
        PathBuf::from("/bin/sh")
    } else {
        t.sh.clone()
    };
    c.arg(sh)
        .arg("-c")
        .arg(format!("{cd}exec {} \"$@\"", privileges(l, &setpriv)))
        .arg("exec")
        .args(argv);
    c.env_clear().envs(process_env(l));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_values() {
        assert_eq!(q("a'b"), "'a'\\''b'");
        assert_eq!(q("$(x) `y`"), "'$(x) `y`'");
    }

    #[test]
    fn a_missing_path_is_located_under_its_real_ancestor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
        let (real, anc) = locate(&link.join("a/b")).expect("locate");
        let base = std::fs::canonicalize(dir.path()).expect("canon");
        assert_eq!(anc, Some(base.clone()));
        assert_eq!(real, base.join("a/b"));
        assert_eq!(locate(dir.path()).expect("exists").1, None);
    }
}
