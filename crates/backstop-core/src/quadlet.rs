//! Volume discovery from quadlet files: which podman volumes and host
//! directories a deployment described by quadlet units keeps its state in.
//!
//! Quadlet units are systemd unit files (`.container`, `.pod`, `.volume`,
//! …) that podman turns into services. This module reads them the way
//! podman's quadlet generator does, as far as storage goes: `Volume=` and
//! `Mount=` of containers and pods, and the names `.volume` units give
//! their volumes. What it finds but cannot back up (anonymous volumes,
//! specifiers it cannot expand, unreadable files) is reported in
//! [`Quadlets::notes`], never skipped silently.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::podman::check_name;

/// The extensions of quadlet unit files.
const UNIT_EXTENSIONS: [&str; 7] = [
    "container",
    "pod",
    "volume",
    "network",
    "kube",
    "image",
    "build",
];

/// What a directory of quadlet files says about storage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Quadlets {
    /// Every quadlet unit file found (.container .pod .volume .network
    /// .kube .image .build), sorted.
    pub files: Vec<PathBuf>,
    /// Named podman volumes used (sorted, deduplicated), with the unit file
    /// that names each.
    pub volumes: Vec<QuadletVolume>,
    /// Host paths bind-mounted into containers (absolute, `%h` expanded),
    /// sorted, deduplicated.
    pub binds: Vec<QuadletBind>,
    /// Things that were found but cannot be backed up, said plainly
    /// (anonymous volumes, unsupported specifiers, unreadable files).
    pub notes: Vec<String>,
}

/// A named podman volume a quadlet unit uses or defines.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct QuadletVolume {
    /// The podman volume name.
    pub name: String,
    /// The unit file that names it (the first in path order when several
    /// do).
    pub unit: PathBuf,
}

/// A host path a quadlet unit bind-mounts into a container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct QuadletBind {
    /// The host path, absolute.
    pub path: PathBuf,
    /// The unit file that names it (the first in path order when several
    /// do).
    pub unit: PathBuf,
}

/// Reads the quadlet files in `dir` and its subdirectories (as podman does
/// for rootless units; hidden directories are skipped), and says which
/// volumes and bind mounts they use. `home` is what `%h` expands to.
///
/// # Errors
///
/// Fails only when `dir` itself cannot be read; a file or subdirectory that
/// cannot be read becomes a note.
pub fn discover(dir: &Path, home: &Path) -> Result<Quadlets> {
    let mut found = Quadlets::default();
    std::fs::read_dir(dir).map_err(|e| Error::io("read quadlet directory", dir, e))?;
    collect_files(dir, &mut found.files, &mut found.notes);
    found.files.sort();

    let mut units = Vec::new();
    for path in &found.files {
        match read_unit(path) {
            Ok(unit) => units.push((path.clone(), unit)),
            Err(note) => found.notes.push(note),
        }
    }

    // The volume name each `.volume` unit gives, by unit file name (quadlet
    // refers to units by file name, wherever they live).
    let mut volume_names: BTreeMap<String, String> = BTreeMap::new();
    let mut volumes: Vec<QuadletVolume> = Vec::new();
    let mut binds: Vec<QuadletBind> = Vec::new();
    for (path, unit) in &units {
        if extension(path) != Some("volume") {
            continue;
        }
        let Some(file_name) = file_name(path) else {
            continue;
        };
        if let Some(name) = volume_unit_name(path, &file_name, unit, &mut found.notes) {
            volume_names.insert(file_name, name.clone());
            volumes.push(QuadletVolume {
                name,
                unit: path.clone(),
            });
        }
    }

    let mut ctx = Resolve {
        home,
        volume_names: &volume_names,
        volumes: &mut volumes,
        binds: &mut binds,
        notes: &mut found.notes,
    };
    for (path, unit) in &units {
        let section = match extension(path) {
            Some("container") => "Container",
            Some("pod") => "Pod",
            Some("kube") => {
                ctx.notes.push(format!(
                    "{}: the volumes of Kubernetes YAML are not discovered; name them in \
                     the config",
                    path.display()
                ));
                continue;
            }
            _ => continue,
        };
        for value in unit.all(section, "Volume") {
            ctx.volume_line(path, &value);
        }
        for value in unit.all(section, "Mount") {
            match split_words(&value) {
                Ok(words) => {
                    for word in words {
                        ctx.mount_line(path, &word);
                    }
                }
                Err(why) => ctx.notes.push(format!(
                    "{}: Mount={value} cannot be read ({why}): not backed up",
                    path.display()
                )),
            }
        }
    }

    volumes.sort();
    volumes.dedup_by(|b, a| a.name == b.name);
    binds.sort();
    binds.dedup_by(|b, a| a.path == b.path);
    found.volumes = volumes;
    found.binds = binds;
    let mut seen = std::collections::HashSet::new();
    found.notes.retain(|n| seen.insert(n.clone()));
    Ok(found)
}

/// The systemd services the quadlet files in `dir` (and its
/// subdirectories) give, sorted: quadlet names a unit `web.container`'s
/// service `web.service`, a `.kube`'s the same, and the others'
/// `NAME-pod.service`, `NAME-volume.service`, `NAME-network.service`,
/// `NAME-image.service`, `NAME-build.service`, unless the unit says
/// `ServiceName=`. Templates (`web@.container`) are left out: they run
/// only as instances, which are units of their own. Files that cannot be
/// read give none; a missing `dir` gives none.
pub fn service_names(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    collect_files(dir, &mut files, &mut Vec::new());
    let mut names: Vec<String> = files
        .iter()
        .filter_map(|path| service_name(path, &read_unit(path).ok()?))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The service quadlet makes of the unit file `path`.
fn service_name(path: &Path, unit: &Unit) -> Option<String> {
    let ext = extension(path)?;
    let stem = path.file_stem()?.to_str()?;
    if stem.ends_with('@') {
        return None;
    }
    let (section, suffix) = match ext {
        "container" => ("Container", ""),
        "kube" => ("Kube", ""),
        "pod" => ("Pod", "-pod"),
        "volume" => ("Volume", "-volume"),
        "network" => ("Network", "-network"),
        "image" => ("Image", "-image"),
        "build" => ("Build", "-build"),
        _ => return None,
    };
    let base = unit
        .last(section, "ServiceName")
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("{stem}{suffix}"));
    Some(format!("{base}.service"))
}

/// Gathers the quadlet unit files under `dir`, recursing into
/// subdirectories that are not hidden.
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>, notes: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            notes.push(format!("{} cannot be read: {e}", dir.display()));
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                notes.push(format!("{} cannot be read: {e}", dir.display()));
                return;
            }
        };
        let path = entry.path();
        let hidden = entry.file_name().as_encoded_bytes().starts_with(b".");
        // Symlinked unit files are common (units kept in a repository);
        // symlinked directories are not followed, so no loop can form.
        let Ok(kind) = entry.file_type() else {
            notes.push(format!("{} cannot be inspected", path.display()));
            continue;
        };
        if kind.is_dir() {
            if !hidden {
                collect_files(&path, files, notes);
            }
        } else if extension(&path).is_some_and(|ext| UNIT_EXTENSIONS.contains(&ext))
            && !hidden
            && path.is_file()
        {
            files.push(path);
        }
    }
}

/// The name a `.volume` unit gives its volume: `VolumeName=`, or podman's
/// default `systemd-NAME`.
fn volume_unit_name(
    path: &Path,
    file_name: &str,
    unit: &Unit,
    notes: &mut Vec<String>,
) -> Option<String> {
    if let Some(driver) = unit.last("Volume", "Driver")
        && driver != "local"
        && !driver.is_empty()
    {
        notes.push(format!(
            "{}: the volume uses the driver `{driver}`; backstop backs up only local volumes",
            path.display()
        ));
    }
    let Some(raw) = unit.last("Volume", "VolumeName").filter(|v| !v.is_empty()) else {
        let stem = file_name.strip_suffix(".volume").unwrap_or(file_name);
        return named(path, "the volume unit", &format!("systemd-{stem}"), notes);
    };
    match expand_specifiers(&unquote(&raw), None) {
        Ok(name) => named(path, "VolumeName=", &name.to_string_lossy(), notes),
        Err(spec) => {
            notes.push(format!(
                "{}: VolumeName={raw} uses the specifier %{spec}, which backstop does not \
                 expand: not backed up",
                path.display()
            ));
            None
        }
    }
}

/// `name` when podman accepts it as a volume name; otherwise a note.
fn named(path: &Path, what: &str, name: &str, notes: &mut Vec<String>) -> Option<String> {
    match check_name("volume", name) {
        Ok(()) => Some(name.to_string()),
        Err(why) => {
            notes.push(format!(
                "{}: {what} names a volume backstop cannot use: {why}",
                path.display()
            ));
            None
        }
    }
}

/// What `Volume=` and `Mount=` lines resolve against, and where results go.
struct Resolve<'a> {
    home: &'a Path,
    volume_names: &'a BTreeMap<String, String>,
    volumes: &'a mut Vec<QuadletVolume>,
    binds: &'a mut Vec<QuadletBind>,
    notes: &'a mut Vec<String>,
}

impl Resolve<'_> {
    /// One `Volume=` value: `SOURCE:DEST[:OPTIONS]`, or just `DEST` (an
    /// anonymous volume).
    fn volume_line(&mut self, unit: &Path, raw: &str) {
        let value = unquote(raw);
        match value.split_once(':') {
            Some((source, _)) if !source.is_empty() => {
                self.source(unit, &format!("Volume={raw}"), source, false);
            }
            _ => self.notes.push(format!(
                "{}: Volume={raw} is an anonymous volume, which backstop cannot back up \
                 (give it a name)",
                unit.display()
            )),
        }
    }

    /// One mount of a `Mount=` value: comma-separated `key=value` fields,
    /// `type=volume` when no type is given (as podman has it).
    fn mount_line(&mut self, unit: &Path, spec: &str) {
        let key = format!("Mount={spec}");
        let fields = match split_csv(spec) {
            Ok(fields) => fields,
            Err(why) => {
                self.notes.push(format!(
                    "{}: {key} cannot be read ({why}): not backed up",
                    unit.display()
                ));
                return;
            }
        };
        let mut kind = None;
        let mut source = None;
        for field in &fields {
            let (k, v) = field.split_once('=').unwrap_or((field.as_str(), ""));
            match k.trim() {
                "type" if kind.is_none() => kind = Some(v.trim().to_string()),
                "source" | "src" => source = Some(v.trim().to_string()),
                _ => {}
            }
        }
        let kind = kind.unwrap_or_else(|| "volume".into());
        match (kind.as_str(), source) {
            ("volume", Some(source)) if !source.is_empty() => {
                self.source(unit, &key, &source, false);
            }
            ("volume", _) => self.notes.push(format!(
                "{}: {key} is an anonymous volume, which backstop cannot back up (give it \
                 a source)",
                unit.display()
            )),
            ("bind", Some(source)) if !source.is_empty() => {
                self.source(unit, &key, &source, true);
            }
            ("bind", _) => self.notes.push(format!(
                "{}: {key} is a bind mount without a source: not backed up",
                unit.display()
            )),
            ("glob", _) => self.notes.push(format!(
                "{}: {key} binds files by a glob pattern, which backstop does not expand: \
                 not backed up",
                unit.display()
            )),
            // tmpfs, ramfs, devpts, image, artifact: nothing of the
            // deployment's own lives there.
            _ => {}
        }
    }

    /// A mount source: a host path (absolute, `%h…`, or relative to the
    /// unit's directory), a `.volume` unit, or a volume name. `bind` says
    /// it can only be a path.
    fn source(&mut self, unit: &Path, key: &str, raw: &str, bind: bool) {
        let expanded = match expand_specifiers(raw, Some(self.home)) {
            Ok(expanded) => expanded,
            Err(spec) => {
                self.notes.push(format!(
                    "{}: {key} uses the specifier %{spec}, which backstop does not expand: \
                     not backed up",
                    unit.display()
                ));
                return;
            }
        };
        let path = PathBuf::from(&expanded);
        let bytes = expanded.as_encoded_bytes();
        if path.is_absolute() {
            self.bind(unit, clean_absolute(&path));
        } else if bytes.starts_with(b".") || bind {
            // podman resolves relative sources against the unit's directory.
            let base = unit.parent().unwrap_or(Path::new("/"));
            self.bind(unit, clean_lexically(&base.join(&path)));
        } else {
            let name = expanded.to_string_lossy().into_owned();
            let volume = if name.ends_with(".volume") {
                match self.volume_names.get(&name) {
                    Some(volume) => volume.clone(),
                    None => {
                        let stem = name.strip_suffix(".volume").unwrap_or(&name);
                        self.notes.push(format!(
                            "{}: {key} refers to {name}, which is not among these quadlet \
                             files: assuming podman's default name systemd-{stem}",
                            unit.display()
                        ));
                        format!("systemd-{stem}")
                    }
                }
            } else {
                name
            };
            if let Some(name) = named(unit, key, &volume, self.notes) {
                self.volumes.push(QuadletVolume {
                    name,
                    unit: unit.to_path_buf(),
                });
            }
        }
    }

    fn bind(&mut self, unit: &Path, path: PathBuf) {
        self.binds.push(QuadletBind {
            path,
            unit: unit.to_path_buf(),
        });
    }
}

/// A parsed unit file: its key/value lines, by section, in order.
#[derive(Debug, Default)]
struct Unit {
    lines: Vec<(String, String, String)>,
}

impl Unit {
    /// Every value of `key` in `section`, in order; an empty value clears
    /// the values before it (systemd's rule for list settings).
    fn all(&self, section: &str, key: &str) -> Vec<String> {
        let mut values = Vec::new();
        for (s, k, v) in &self.lines {
            if s == section && k == key {
                if v.is_empty() {
                    values.clear();
                } else {
                    values.push(v.clone());
                }
            }
        }
        values
    }

    /// The last value of `key` in `section`.
    fn last(&self, section: &str, key: &str) -> Option<String> {
        self.lines
            .iter()
            .rev()
            .find(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.clone())
    }
}

/// Reads a unit file and its drop-ins (`NAME.d/*.conf` beside it, in name
/// order), or says why it cannot.
fn read_unit(path: &Path) -> Result<Unit, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{} cannot be read ({e}): not backed up", path.display()))?;
    let mut unit = Unit::default();
    parse_unit(&text, &mut unit);
    let mut dropin_dir = path.as_os_str().to_owned();
    dropin_dir.push(".d");
    let dropin_dir = PathBuf::from(dropin_dir);
    if let Ok(entries) = std::fs::read_dir(&dropin_dir) {
        let mut confs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| extension(p) == Some("conf"))
            .collect();
        confs.sort();
        for conf in confs {
            let text = std::fs::read_to_string(&conf).map_err(|e| {
                format!(
                    "{} (a drop-in of {}) cannot be read ({e}): {} not backed up",
                    conf.display(),
                    path.display(),
                    path.display()
                )
            })?;
            parse_unit(&text, &mut unit);
        }
    }
    Ok(unit)
}

/// Parses systemd unit syntax into `unit`: sections, `key = value` lines,
/// comments (`#`, `;`), and continuation lines (a trailing `\` joins the
/// next line with a space; comment lines inside are skipped).
fn parse_unit(text: &str, unit: &mut Unit) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut section = String::new();
    let mut pending: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(mut joined) = pending.take() {
            if trimmed.starts_with('#') || trimmed.starts_with(';') {
                pending = Some(joined);
                continue;
            }
            if let Some(head) = trimmed.strip_suffix('\\') {
                joined.push_str(head);
                joined.push(' ');
                pending = Some(joined);
            } else {
                joined.push_str(trimmed);
                add_line(unit, &section, &joined);
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            let mut joined = head.to_string();
            joined.push(' ');
            pending = Some(joined);
        } else {
            add_line(unit, &section, trimmed);
        }
    }
    if let Some(joined) = pending {
        add_line(unit, &section, &joined);
    }
}

fn add_line(unit: &mut Unit, section: &str, line: &str) {
    if let Some((key, value)) = line.split_once('=') {
        unit.lines.push((
            section.to_string(),
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
}

/// A value with its surrounding double quotes removed (and `\"`, `\\`
/// inside them unescaped); other values as they are.
fn unquote(value: &str) -> String {
    let Some(inner) = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|_| value.len() >= 2)
    else {
        return value.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('"' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a value into words as systemd does for command-like settings:
/// whitespace separates, double quotes group (with `\"` and `\\`).
fn split_words(value: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(n) => word.push(n),
                    None => word.push('\\'),
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("a double quote is not closed");
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Splits one CSV record (the syntax of `--mount`): commas separate, double
/// quotes group, `""` inside quotes is a quote.
fn split_csv(record: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = record.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    if quoted {
        return Err("a double quote is not closed");
    }
    fields.push(field);
    Ok(fields)
}

/// Expands `%%` to `%` and, when `home` is given, `%h` to it. Any other
/// specifier is returned as the error: backstop does not guess what systemd
/// would make of it.
fn expand_specifiers(value: &str, home: Option<&Path>) -> Result<OsString, char> {
    let mut out = OsString::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            let mut buf = [0u8; 4];
            out.push(c.encode_utf8(&mut buf) as &str);
            continue;
        }
        match (chars.next(), home) {
            (Some('%'), _) => out.push("%"),
            (Some('h'), Some(home)) => out.push(home.as_os_str()),
            (Some(spec), _) => return Err(spec),
            (None, _) => return Err(' '),
        }
    }
    Ok(out)
}

/// An absolute path without `.` components or trailing slashes (`..` is
/// kept: the kernel resolves it, through symlinks).
fn clean_absolute(path: &Path) -> PathBuf {
    path.components().collect()
}

/// A path with `.` and `..` resolved lexically, as podman's
/// `filepath.Join` does for relative sources.
fn clean_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                if !out.pop() {
                    out.push(component);
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn extension(path: &Path) -> Option<&str> {
    path.extension().and_then(|e| e.to_str())
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir {
        tmp: tempfile::TempDir,
    }

    impl Dir {
        fn new() -> Dir {
            Dir {
                tmp: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.path(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }

        fn discover(&self) -> Quadlets {
            discover(self.tmp.path(), Path::new("/home/u")).unwrap()
        }
    }

    fn volume_names(q: &Quadlets) -> Vec<&str> {
        q.volumes.iter().map(|v| v.name.as_str()).collect()
    }

    fn bind_paths(q: &Quadlets) -> Vec<PathBuf> {
        q.binds.iter().map(|b| b.path.clone()).collect()
    }

    fn notes_mention(q: &Quadlets, what: &str) -> bool {
        q.notes.iter().any(|n| n.contains(what))
    }

    #[test]
    fn every_unit_kind_is_listed_sorted_and_others_are_not() {
        let d = Dir::new();
        for name in [
            "b.container",
            "a.pod",
            "c.volume",
            "d.network",
            "e.kube",
            "f.image",
            "g.build",
            "README.md",
            "x.service",
            "h.container.d/override.conf",
            ".hidden.container",
        ] {
            d.write(name, "");
        }
        let q = d.discover();
        let names: Vec<String> = q
            .files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "a.pod",
                "b.container",
                "c.volume",
                "d.network",
                "e.kube",
                "f.image",
                "g.build"
            ]
        );
    }

    #[test]
    fn subdirectories_are_read_but_hidden_ones_are_not() {
        let d = Dir::new();
        d.write("app/web.container", "[Container]\nVolume=web-data:/data\n");
        d.write(".git/old.container", "[Container]\nVolume=old:/data\n");
        let q = d.discover();
        assert_eq!(q.files, [d.path("app/web.container")]);
        assert_eq!(volume_names(&q), ["web-data"]);
        assert_eq!(q.volumes[0].unit, d.path("app/web.container"));
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = Dir::new();
        assert!(discover(&d.path("nope"), Path::new("/home/u")).is_err());
    }

    #[test]
    fn volume_lines_name_volumes_and_binds() {
        let d = Dir::new();
        let unit = d.write(
            "app.container",
            "[Unit]\nDescription=app\n\n[Container]\nImage=app\n\
             Volume=app-data:/var/lib/app:Z\n\
             Volume=/srv/app/config:/etc/app:ro\n\
             Volume=%h/media:/media\n\
             Volume=./local:/local\n\
             Volume=../shared/dir/:/shared\n",
        );
        let q = d.discover();
        assert_eq!(
            q.volumes,
            [QuadletVolume {
                name: "app-data".into(),
                unit: unit.clone()
            }]
        );
        let mut expected = vec![
            PathBuf::from("/srv/app/config"),
            PathBuf::from("/home/u/media"),
            d.path("local"),
            d.tmp.path().parent().unwrap().join("shared/dir"),
        ];
        expected.sort();
        assert_eq!(bind_paths(&q), expected);
        assert!(q.binds.iter().all(|b| b.unit == unit));
        assert!(q.notes.is_empty(), "{:?}", q.notes);
    }

    #[test]
    fn anonymous_volumes_are_noted() {
        let d = Dir::new();
        d.write(
            "app.container",
            "[Container]\nVolume=/var/cache/app\nMount=type=volume,destination=/x\n",
        );
        let q = d.discover();
        assert!(q.volumes.is_empty());
        assert!(q.binds.is_empty());
        assert_eq!(q.notes.len(), 2, "{:?}", q.notes);
        assert!(q.notes.iter().all(|n| n.contains("anonymous volume")));
        assert!(notes_mention(&q, "Volume=/var/cache/app"));
    }

    #[test]
    fn volume_units_give_names() {
        let d = Dir::new();
        let app = d.write(
            "app.container",
            "[Container]\nVolume=db.volume:/db\nVolume=plain.volume:/plain\n",
        );
        let db = d.write(
            "db.volume",
            "[Volume]\nVolumeName=old-name\nVolumeName = app-db\n",
        );
        d.write("plain.volume", "[Volume]\n");
        let unused = d.write("unused.volume", "[Volume]\nLabel=x=y\n");
        let q = d.discover();
        assert_eq!(
            q.volumes,
            [
                QuadletVolume {
                    name: "app-db".into(),
                    unit: app.clone()
                },
                QuadletVolume {
                    name: "systemd-plain".into(),
                    unit: app.clone()
                },
                QuadletVolume {
                    name: "systemd-unused".into(),
                    unit: unused
                },
            ]
        );
        assert!(q.notes.is_empty(), "{:?}", q.notes);
        assert!(q.files.contains(&db));
    }

    #[test]
    fn a_volume_unit_found_nowhere_gets_the_default_name_and_a_note() {
        let d = Dir::new();
        d.write("app.container", "[Container]\nVolume=elsewhere.volume:/x\n");
        let q = d.discover();
        assert_eq!(volume_names(&q), ["systemd-elsewhere"]);
        assert!(notes_mention(&q, "not among these quadlet files"));
    }

    #[test]
    fn non_local_volume_drivers_are_noted() {
        let d = Dir::new();
        d.write("img.volume", "[Volume]\nDriver=image\nImage=foo\n");
        let q = d.discover();
        assert_eq!(volume_names(&q), ["systemd-img"]);
        assert!(notes_mention(&q, "driver `image`"));
    }

    #[test]
    fn mount_lines_give_volumes_and_binds() {
        let d = Dir::new();
        d.write(
            "app.container",
            "[Container]\n\
             Mount=type=volume,source=vol-a,destination=/a\n\
             Mount=type=volume,src=data.volume,dst=/d,ro=true\n\
             Mount=type=bind,src=/srv/b,dst=/b type=bind,source=rel,target=/r\n\
             Mount=\"type=bind,\\\"src=/srv/with space,x\\\",dst=/s\"\n\
             Mount=src=vol-default,dst=/v\n\
             Mount=type=tmpfs,destination=/tmp\n\
             Mount=type=glob,src=/usr/lib/*.so,dst=/g\n",
        );
        d.write("data.volume", "[Volume]\nVolumeName=named-data\n");
        let q = d.discover();
        assert_eq!(volume_names(&q), ["named-data", "vol-a", "vol-default"]);
        assert_eq!(
            bind_paths(&q),
            [
                d.path("rel"),
                PathBuf::from("/srv/b"),
                PathBuf::from("/srv/with space,x"),
            ]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
        assert_eq!(q.notes.len(), 1, "{:?}", q.notes);
        assert!(notes_mention(&q, "glob"));
    }

    #[test]
    fn only_the_container_and_pod_sections_count() {
        let d = Dir::new();
        d.write(
            "app.container",
            "[Unit]\nVolume=unit-vol:/x\n[Service]\nVolume=svc-vol:/x\n\
             [Container]\nVolume=ctr-vol:/x\n",
        );
        d.write(
            "app.pod",
            "[Pod]\nVolume=pod-vol:/x\n[Container]\nVolume=wrong-vol:/x\n",
        );
        d.write("net.network", "[Network]\nVolume=net-vol:/x\n");
        let q = d.discover();
        assert_eq!(volume_names(&q), ["ctr-vol", "pod-vol"]);
    }

    #[test]
    fn unit_syntax_is_read_like_systemd() {
        let d = Dir::new();
        d.write(
            "app.container",
            "\u{feff}# a comment\n; another\n\n[Container]\n\
             # Volume=commented:/x\n\
             ; Volume=commented2:/x\n\
               Volume   =   spaced:/x   \n\
             Volume=\"quoted:/x\"\n\
             Volume=one:/x\n\
             Volume=\n\
             Volume=after-reset:/x\n\
             Volume=cont\\\n\
             # a comment inside a continuation\n\
             inued:/x\n",
        );
        let q = d.discover();
        // The continuation joins with a space: `cont inued` is no name.
        assert_eq!(volume_names(&q), ["after-reset"]);
        assert!(notes_mention(&q, "cont inued"), "{:?}", q.notes);
        assert!(!notes_mention(&q, "commented"));

        let d = Dir::new();
        d.write(
            "app.container",
            "[Container]\nVolume=  spaced:/x  \nVolume=\"quoted:/x\"\n\
             Volume=a:/x\nVolume=a:/y\nVolume=/srv/x:/a \\\n  :ro\n",
        );
        let q = d.discover();
        assert_eq!(volume_names(&q), ["a", "quoted", "spaced"]);
        assert_eq!(bind_paths(&q), [PathBuf::from("/srv/x")]);
    }

    #[test]
    fn repeated_keys_and_units_deduplicate() {
        let d = Dir::new();
        let a = d.write(
            "a.container",
            "[Container]\nVolume=shared:/x\nVolume=shared:/y\nVolume=/srv/s:/s\n",
        );
        d.write(
            "b.container",
            "[Container]\nVolume=shared:/z\nVolume=/srv/s/:/s\n",
        );
        let q = d.discover();
        assert_eq!(
            q.volumes,
            [QuadletVolume {
                name: "shared".into(),
                unit: a.clone()
            }]
        );
        assert_eq!(
            q.binds,
            [QuadletBind {
                path: "/srv/s".into(),
                unit: a
            }]
        );
    }

    #[test]
    fn specifiers_are_expanded_or_noted() {
        let d = Dir::new();
        d.write(
            "app.container",
            "[Container]\nVolume=%h/data%%1:/d\nVolume=%t/sock:/s\nVolume=%N-data:/n\n\
             Volume=per%%cent:/p\n",
        );
        d.write("t.volume", "[Volume]\nVolumeName=%N\n");
        let q = d.discover();
        assert_eq!(bind_paths(&q), [PathBuf::from("/home/u/data%1")]);
        assert!(q.volumes.is_empty(), "{:?}", q.volumes);
        assert!(notes_mention(&q, "specifier %t"), "{:?}", q.notes);
        assert!(notes_mention(&q, "Volume=%N-data"), "{:?}", q.notes);
        assert!(notes_mention(&q, "VolumeName=%N"), "{:?}", q.notes);
        // `%%` gives `per%cent`, which podman does not take as a name.
        assert!(notes_mention(&q, "per%cent"), "{:?}", q.notes);
    }

    #[test]
    fn drop_ins_add_volumes() {
        let d = Dir::new();
        d.write("app.container", "[Container]\nVolume=base:/b\n");
        d.write(
            "app.container.d/10-extra.conf",
            "[Container]\nVolume=extra:/e\n",
        );
        let q = d.discover();
        assert_eq!(volume_names(&q), ["base", "extra"]);
    }

    #[test]
    fn service_names_follow_quadlets_naming() {
        let d = Dir::new();
        d.write("web.container", "[Container]\nImage=x\n");
        d.write("db.pod", "[Pod]\n");
        d.write("data.volume", "[Volume]\n");
        d.write("net.network", "[Network]\n");
        d.write("app.kube", "[Kube]\nYaml=app.yaml\n");
        d.write("sub/img.image", "[Image]\nImage=x\n");
        d.write(
            "named.container",
            "[Container]\nImage=x\nServiceName=custom\n",
        );
        d.write("tmpl@.container", "[Container]\nImage=x\n");
        d.write("tmpl@one.container", "[Container]\nImage=x\n");
        d.write("notes.txt", "not a unit");
        assert_eq!(
            service_names(d.tmp.path()),
            [
                "app.service",
                "custom.service",
                "data-volume.service",
                "db-pod.service",
                "img-image.service",
                "net-network.service",
                "tmpl@one.service",
                "web.service",
            ]
        );
        assert!(service_names(&d.path("missing")).is_empty());
    }

    #[test]
    fn kube_units_are_noted() {
        let d = Dir::new();
        d.write("app.kube", "[Kube]\nYaml=app.yaml\n");
        let q = d.discover();
        assert!(notes_mention(&q, "Kubernetes YAML"));
    }

    #[test]
    fn unreadable_files_are_noted() {
        let d = Dir::new();
        d.write("bad.container", "");
        std::fs::write(d.path("bad.container"), [0xff, 0xfe, 0x00, b'\n']).unwrap();
        d.write("good.container", "[Container]\nVolume=good:/g\n");
        let q = d.discover();
        assert_eq!(volume_names(&q), ["good"]);
        assert!(
            notes_mention(&q, "bad.container cannot be read"),
            "{:?}",
            q.notes
        );
    }

    #[test]
    fn syntax_helpers() {
        assert_eq!(
            split_words(r#"a "b c" d\"e"#).unwrap(),
            ["a", "b c", "d\"e"]
        );
        assert!(split_words("\"open").is_err());
        assert_eq!(
            split_csv(r#"type=bind,"src=/a,b",dst=/c"#).unwrap(),
            ["type=bind", "src=/a,b", "dst=/c"]
        );
        assert_eq!(unquote(r#""a\"b""#), "a\"b");
        assert_eq!(unquote("\""), "\"");
        assert_eq!(
            clean_lexically(Path::new("/a/b/./../c/")),
            PathBuf::from("/a/c")
        );
    }
}
