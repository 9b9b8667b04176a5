//! ROM provisioning and identification.
//!
//! ROMs are not part of this repository. [`install`] fetches the pinned `ale-py` wheel from PyPI
//! with pip (the wheel is a zip carrying `ale_py/roms/*.bin` and `md5.json`), checks every ROM
//! against that md5 list and extracts them into the ROM directory ([`rom_dir`]).
//!
//! Before any file reaches the emulator it is identified by its md5 ([`identify`]): ALE 0.6
//! calls `exit(1)` on a missing or unsupported ROM and picks a game's settings from the file
//! *name*, so a truncated, corrupt or unknown file must be refused here, and a good ROM stored
//! under another name is loaded through a copy under its canonical name ([`VerifiedRom`]).

use crate::error::{Error, Result};
use md5::{Digest, Md5};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pinned wheel the ROMs come from.
pub const ALE_PY_VERSION: &str = "0.12.1";

/// The games ALE 0.6 (vendored by ale-sys 0.1.2) has settings for, with the md5 of the ROM
/// `ale-py` 0.12.1 ships for each (from the wheel's `ale_py/roms/md5.json`). ALE 0.6 only runs
/// these: it looks the game up by file name and exits the process on any other.
pub const KNOWN_ROMS: &[(&str, &str)] = &[
    ("adventure", "4b27f5397c442d25f0c418ccdacf1926"),
    ("air_raid", "35be55426c1fec32dfb503b4f0651572"),
    ("alien", "f1a0a23e6464d954e3a9579c4ccd01c8"),
    ("amidar", "acb7750b4d0c4bd34969802a7deb2990"),
    ("assault", "de78b3a064d374390ac0710f95edde92"),
    ("asterix", "89a68746eff7f266bbf08de2483abe55"),
    ("asteroids", "ccbd36746ed4525821a8083b0d6d2c2c"),
    ("atlantis", "9ad36e699ef6f45d9eb6c4cf90475c9f"),
    ("bank_heist", "00ce0bdd43aed84a983bef38fe7f5ee3"),
    ("battle_zone", "41f252a66c6301f1e8ab3612c19bc5d4"),
    ("beam_rider", "79ab4123a83dc11d468fb2108ea09e2e"),
    ("berzerk", "136f75c4dd02c29283752b7e5799f978"),
    ("bowling", "c9b7afad3bfd922e006a6bfc1d4f3fe7"),
    ("boxing", "c3ef5c4653212088eda54dc91d787870"),
    ("breakout", "f34f08e5eb96e500e851a80be3277a56"),
    ("carnival", "028024fb8e5e5f18ea586652f9799c96"),
    ("centipede", "91c2098e88a6b13f977af8c003e0bca5"),
    ("chopper_command", "c1cb228470a87beb5f36e90ac745da26"),
    ("crazy_climber", "55ef7b65066428367844342ed59f956c"),
    ("defender", "0f643c34e40e3f1daafd9c524d3ffe64"),
    ("demon_attack", "f0e0addc07971561ab80d9abe1b8d333"),
    ("donkey_kong", "36b20c427975760cb9cf4a47e41369e4"),
    ("double_dunk", "368d88a6c071caba60b4f778615aae94"),
    ("elevator_action", "71f8bacfbdca019113f3f0801849057e"),
    ("enduro", "94b92a882f6dbaa6993a46e2dcc58402"),
    ("fishing_derby", "b8865f05676e64f3bec72b9defdacfa7"),
    ("freeway", "8e0ab801b1705a740b476b7f588c6d16"),
    ("frogger", "081e2c114c9c20b61acf25fc95c71bf4"),
    ("frostbite", "4ca73eb959299471788f0b685c3ba0b5"),
    ("galaxian", "211774f4c5739042618be8ff67351177"),
    ("gopher", "c16c79aad6272baffb8aae9a7fff0864"),
    ("gravitar", "8ac18076d01a6b63acf6e2cab4968940"),
    ("hero", "fca4a5be1251927027f2c24774a02160"),
    ("ice_hockey", "a4c08c4994eb9d24fb78be1793e82e26"),
    ("jamesbond", "e51030251e440cffaab1ac63438b44ae"),
    ("journey_escape", "718ae62c70af4e5fd8e932fee216948a"),
    ("kaboom", "5428cdfada281c569c74c7308c7f2c26"),
    ("kangaroo", "4326edb70ff20d0ee5ba58fa5cb09d60"),
    ("keystone_kapers", "6c1f3f2e359dbf55df462ccbcdd2f6bf"),
    ("king_kong", "0dd4c69b5f9a7ae96a7a08329496779a"),
    ("koolaid", "534e23210dd1993c828d944c6ac4d9fb"),
    ("krull", "4baada22435320d185c95b7dd2bcdb24"),
    ("kung_fu_master", "5b92a93b23523ff16e2789b820e2a4c5"),
    ("laser_gates", "8e4cd60d93fcde8065c1a2b972a26377"),
    ("lost_luggage", "2d76c5d1aad506442b9e9fb67765e051"),
    ("montezuma_revenge", "3347a6dd59049b15a38394aa2dafa585"),
    ("mr_do", "aa7bb54d2c189a31bb1fa20099e42859"),
    ("ms_pacman", "87e79cd41ce136fd4f72cc6e2c161bee"),
    ("name_this_game", "36306070f0c90a72461551a7a4f3a209"),
    ("phoenix", "7e52a95074a66640fcfde124fffd491a"),
    ("pitfall", "3e90cf23106f2e08b2781e41299de556"),
    ("pong", "60e0ea3cbe0913d39803477945e9e5ec"),
    ("pooyan", "4799a40b6e889370b7ee55c17ba65141"),
    ("private_eye", "ef3a4f64b6494ba770862768caf04b86"),
    ("qbert", "484b0076816a104875e00467d431c2d2"),
    ("riverraid", "393948436d1f4cc3192410bb918f9724"),
    ("road_runner", "ce5cc62608be2cd3ed8abd844efb8919"),
    ("robotank", "4f618c2429138e0280969193ed6c107e"),
    ("seaquest", "240bfbac5163af4df5ae713985386f92"),
    ("sir_lancelot", "dd0cbe5351551a538414fb9e37fc56e8"),
    ("skiing", "b76fbadc8ffb1f83e2ca08b6fb4d6c9f"),
    ("solaris", "e72eb8d4410152bdcb69e7fba327b420"),
    ("space_invaders", "72ffbef6504b75e69ee1045af9075f66"),
    ("star_gunner", "a3c1c70024d7aabb41381adbfb6d3b25"),
    ("tennis", "42cdd6a9e42a3639e190722b8ea3fc51"),
    ("tetris", "b0e1ee07fbc73493eac5651a52f90f00"),
    ("time_pilot", "fc2104dd2dadf9a6176c1c1c8f87ced9"),
    ("trondead", "fb27afe896e7c928089307b32e5642ee"),
    ("turmoil", "7a5463545dfb2dcfdafa6074b2f2c15e"),
    ("tutankham", "085322bae40d904f53bdcc56df0593fc"),
    ("up_n_down", "a499d720e7ee35c62424de882a3351b6"),
    ("venture", "3e899eba0ca8cd2972da1ae5479b4f0d"),
    ("video_pinball", "107cc025334211e6d29da0b6be46aec7"),
    ("wizard_of_wor", "7e8aa18bc9502eb57daaf5e7c1e94da7"),
    ("yars_revenge", "c5930d0e8cdae3e037349bfa08e871be"),
    ("zaxxon", "eea0da9b987d661264cce69a7c13c3bd"),
];

/// Where ROMs live: `$GALA_ROM_DIR`, else `$XDG_DATA_HOME/gala-gpu/roms`, else
/// `~/.local/share/gala-gpu/roms`.
/// A path that exists but is not a folder is refused naming the variable it came from (the OS
/// error alone, "File exists", does not say which setting to fix).
pub fn rom_dir() -> Result<PathBuf> {
    let (dir, from) = if let Some(d) = std::env::var_os("GALA_ROM_DIR").filter(|d| !d.is_empty()) {
        (PathBuf::from(d), "GALA_ROM_DIR")
    } else if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        (PathBuf::from(d).join("gala-gpu").join("roms"), "XDG_DATA_HOME")
    } else {
        match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(h) => (PathBuf::from(h).join(".local/share/gala-gpu/roms"), "HOME"),
            None => {
                return Err(Error::Config(
                    "cannot place the ROM directory: none of GALA_ROM_DIR, XDG_DATA_HOME or HOME is set; set GALA_ROM_DIR".into(),
                ))
            }
        }
    };
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Config(format!(
            "the ROM directory {} (from {from}) exists but is not a directory; set GALA_ROM_DIR to a folder (created if missing)",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Lower-case hex md5 of a byte string.
pub fn md5_hex(bytes: &[u8]) -> String {
    let digest = Md5::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves a game name loosely to the canonical ROM name ALE 0.6 knows (`pong`,
/// `space_invaders`): case, `_`/`-`/space separators, an `ALE/` prefix, a `-vN` suffix and the
/// gym suffixes `NoFrameskip`/`Deterministic` are ignored. `None` if no such game.
pub fn canonical_name(name: &str) -> Option<&'static str> {
    let mut s = name.trim();
    if let Some(rest) = s.strip_prefix("ALE/").or_else(|| s.strip_prefix("ale/")) {
        s = rest;
    }
    if let Some(rest) = s.strip_suffix(".bin") {
        s = rest;
    }
    // `-v0`, `-v4`, `-v5`: the gym/ALE env-id version.
    if let Some(i) = s.rfind("-v") {
        if s[i + 2..].chars().all(|c| c.is_ascii_digit()) && i + 2 < s.len() {
            s = &s[..i];
        }
    }
    for suffix in ["NoFrameskip", "Deterministic"] {
        if let Some(rest) = s.strip_suffix(suffix) {
            s = rest;
        }
    }
    let key: String = s.chars().filter(|c| !matches!(c, '_' | '-' | ' ')).map(|c| c.to_ascii_lowercase()).collect();
    if key.is_empty() {
        return None;
    }
    KNOWN_ROMS.iter().map(|(n, _)| *n).find(|n| n.replace('_', "") == key)
}

/// The canonical game a ROM image is, by its md5, if ALE 0.6 supports it.
pub fn game_of_md5(md5: &str) -> Option<&'static str> {
    KNOWN_ROMS.iter().find(|(_, m)| m.eq_ignore_ascii_case(md5)).map(|(n, _)| *n)
}

/// A ROM file whose content was checked, available under its canonical file name
/// (`<dir>/<game>.bin`) so that ALE 0.6 picks the right game settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRom {
    /// Canonical game name (`pong`).
    pub game: &'static str,
    pub md5: String,
    /// The file to hand to ALE; its name is `<game>.bin` and its md5 is `md5`.
    pub path: PathBuf,
}

/// Reads and identifies a ROM file. Errors (never exits) on a missing, truncated, corrupt or
/// unknown file; when the file is not named `<game>.bin` its verified bytes are copied to a
/// private directory under that name.
pub fn identify(path: &Path) -> Result<VerifiedRom> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let md5 = md5_hex(&bytes);
    let Some(game) = game_of_md5(&md5) else {
        let named = path.file_stem().and_then(|s| s.to_str()).and_then(canonical_name);
        let hint = match named {
            Some(g) => format!(
                "it is named like `{g}` but its content differs from the known {g}.bin (md5 {}): the file is truncated, corrupt or another release; reinstall with `gala-gpu roms install`",
                KNOWN_ROMS.iter().find(|(n, _)| *n == g).map(|(_, m)| *m).unwrap_or("?")
            ),
            None => "it is not one of the ROMs ALE 0.6 supports (see `gala-gpu roms list`); install the known ROMs with `gala-gpu roms install`".to_string(),
        };
        return Err(Error::Env(format!(
            "refusing ROM {} ({} bytes, md5 {md5}): {hint}",
            path.display(),
            bytes.len()
        )));
    };
    let canonical_file = format!("{game}.bin");
    if path.file_name().and_then(|n| n.to_str()) == Some(canonical_file.as_str()) {
        return Ok(VerifiedRom { game, md5, path: path.to_path_buf() });
    }
    // ALE 0.6 chooses the game by file name: stage the verified bytes as `<game>.bin`. The
    // directory is keyed by md5, so concurrent processes write identical content.
    let dir = std::env::temp_dir().join(format!("gala-gpu-rom-{md5}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let staged = dir.join(&canonical_file);
    let ok = std::fs::read(&staged).map(|b| md5_hex(&b) == md5).unwrap_or(false);
    if !ok {
        write_atomic(&staged, &bytes)?;
    }
    Ok(VerifiedRom { game, md5, path: staged })
}

/// Finds the installed ROM of a game (by canonical name) and verifies it.
pub fn find_installed(game: &str) -> Result<VerifiedRom> {
    let dir = rom_dir()?;
    let path = dir.join(format!("{game}.bin"));
    if !path.is_file() {
        return Err(Error::Env(format!(
            "no ROM for `{game}` in {}: run `gala-gpu roms install` (fetches ale-py {ALE_PY_VERSION} from PyPI with pip), set GALA_ROM_DIR to a directory holding {game}.bin, or pass --rom PATH",
            dir.display()
        )));
    }
    let rom = identify(&path)?;
    if rom.game != game {
        return Err(Error::Env(format!(
            "{} holds the ROM of `{}`, not `{game}`; reinstall with `gala-gpu roms install`",
            path.display(),
            rom.game
        )));
    }
    Ok(rom)
}

/// Whether any ROM is installed (used to decide whether to provision on first use).
pub fn any_installed() -> bool {
    rom_dir().map(|d| KNOWN_ROMS.iter().any(|(n, _)| d.join(format!("{n}.bin")).is_file())).unwrap_or(false)
}

/// One installed ROM file, as `list` reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RomEntry {
    /// Canonical game name (the file stem).
    pub game: String,
    pub path: PathBuf,
    /// The file's md5 equals the one in the installed md5.json (or, for games ALE 0.6 runs, the
    /// pinned list).
    pub md5_ok: bool,
    /// ALE 0.6 has settings for this game (it can be trained).
    pub playable: bool,
}

/// The ROMs in the ROM directory, sorted by name; empty if none are installed.
pub fn list() -> Result<Vec<RomEntry>> {
    let dir = rom_dir()?;
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let md5s: BTreeMap<String, String> = match std::fs::read(dir.join("md5.json")) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => BTreeMap::new(),
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let path = entry.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        let Some(game) = file.strip_suffix(".bin") else { continue };
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let md5 = md5_hex(&bytes);
        let pinned = KNOWN_ROMS.iter().find(|(n, _)| *n == game).map(|(_, m)| *m);
        let md5_ok = match (pinned, md5s.get(&file)) {
            (Some(p), _) => p == md5,
            (None, Some(listed)) => *listed == md5,
            (None, None) => false,
        };
        out.push(RomEntry { game: game.to_string(), path, md5_ok, playable: pinned.is_some() });
    }
    out.sort_by(|a, b| a.game.cmp(&b.game));
    Ok(out)
}

/// What [`install`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InstallReport {
    pub dir: PathBuf,
    /// ROM files written (all the wheel carries, including games ALE 0.6 cannot run).
    pub roms: usize,
    /// Of those, games this build can train on.
    pub playable: usize,
}

/// The pip command `install` runs (also printed when pip is missing).
pub fn pip_command(dest: &Path) -> Vec<String> {
    // Any platform's wheel carries the same ROMs; pinning one (manylinux x86_64, CPython 3.11)
    // makes the download independent of the local Python version and platform.
    [
        "-m", "pip", "download", "--no-deps", &format!("ale-py=={ALE_PY_VERSION}"), "--only-binary=:all:",
        "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
        "--quiet", "--dest",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once(dest.display().to_string()))
    .collect()
}

/// Downloads the pinned ale-py wheel with pip and installs its ROMs into [`rom_dir`].
pub fn install() -> Result<InstallReport> {
    let dir = rom_dir()?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // A download folder private to this process, inside the ROM dir (same filesystem).
    let download = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download).map_err(|e| Error::io(&download, e))?;
    let result = download_and_install(&download, &dir);
    let _ = std::fs::remove_dir_all(&download);
    result
}

fn download_and_install(download: &Path, dir: &Path) -> Result<InstallReport> {
    let python = std::env::var("GALA_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let args = pip_command(download);
    let manual_dest = std::env::temp_dir().join("ale-py-wheel");
    let manual = format!(
        "`python3 {}` on any machine with pip and PyPI access, then `gala-gpu roms install --wheel {}/ale_py-{ALE_PY_VERSION}-*.whl` (or unzip its ale_py/roms/*.bin and md5.json into {} yourself)",
        pip_command(&manual_dest).join(" "),
        manual_dest.display(),
        dir.display()
    );
    let output = Command::new(&python).args(&args).output().map_err(|e| {
        Error::Env(format!(
            "cannot run `{python}` to download the ROMs ({e}): install Python 3 with pip (e.g. `apt-get install python3-pip`), set GALA_PYTHON to a python that has pip, or run {manual}"
        ))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        let hint = if stderr.contains("No module named pip") {
            "pip is missing: `apt-get install python3-pip` (or `python3 -m ensurepip`), then retry".to_string()
        } else {
            format!("check the network access to PyPI, or run {manual}")
        };
        return Err(Error::Env(format!("pip could not download ale-py {ALE_PY_VERSION}: {last}; {hint}")));
    }
    let wheel = std::fs::read_dir(download)
        .map_err(|e| Error::io(download, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Env(format!("pip reported success but left no .whl in {}", download.display())))?;
    install_from_wheel(&wheel)
}

/// Installs the ROMs of an already downloaded ale-py wheel into [`rom_dir`]. Every ROM is
/// checked against the wheel's md5.json before it is written.
pub fn install_from_wheel(wheel: &Path) -> Result<InstallReport> {
    let dir = rom_dir()?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let file = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let bad_wheel = |e: zip::result::ZipError| {
        Error::Env(format!("{} is not a readable ale-py wheel ({e}); download it again", wheel.display()))
    };
    let mut zip = zip::ZipArchive::new(file).map_err(bad_wheel)?;
    let read_entry = |zip: &mut zip::ZipArchive<std::fs::File>, name: &str| -> Result<Vec<u8>> {
        let mut f = zip.by_name(name).map_err(bad_wheel)?;
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut buf).map_err(|e| Error::io(wheel, e))?;
        Ok(buf)
    };
    let md5_json = read_entry(&mut zip, "ale_py/roms/md5.json")?;
    let md5s: BTreeMap<String, String> = serde_json::from_slice(&md5_json).map_err(|e| {
        Error::Env(format!("{}: ale_py/roms/md5.json is not a name → md5 map ({e})", wheel.display()))
    })?;
    let names: Vec<String> = zip
        .file_names()
        .filter(|n| n.starts_with("ale_py/roms/") && n.ends_with(".bin") && !n[12..].contains('/'))
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err(Error::Env(format!("{} holds no ale_py/roms/*.bin; is it the ale-py {ALE_PY_VERSION} wheel?", wheel.display())));
    }
    let (mut roms, mut playable) = (0, 0);
    for name in names {
        let file = &name["ale_py/roms/".len()..];
        let bytes = read_entry(&mut zip, &name)?;
        let md5 = md5_hex(&bytes);
        match md5s.get(file) {
            Some(expected) if *expected == md5 => {}
            Some(expected) => {
                return Err(Error::Env(format!(
                    "{}: {file} has md5 {md5} but md5.json lists {expected}; the wheel is corrupt, download it again",
                    wheel.display()
                )))
            }
            None => continue, // not in the list: not a ROM the wheel vouches for
        }
        write_atomic(&dir.join(file), &bytes)?;
        roms += 1;
        if game_of_md5(&md5).is_some() {
            playable += 1;
        }
    }
    write_atomic(&dir.join("md5.json"), &md5_json)?;
    Ok(InstallReport { dir, roms, playable })
}

/// Writes via a temporary file and a rename, so that a reader never sees a partial ROM.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_loosely() {
        for n in ["pong", "Pong", "PongNoFrameskip-v4", "ALE/Pong-v5", "PongDeterministic-v4", "pong.bin"] {
            assert_eq!(canonical_name(n), Some("pong"), "{n}");
        }
        for n in ["space_invaders", "SpaceInvaders", "SpaceInvadersNoFrameskip-v4", "space-invaders"] {
            assert_eq!(canonical_name(n), Some("space_invaders"), "{n}");
        }
        assert_eq!(canonical_name("MontezumaRevenge-v5"), Some("montezuma_revenge"));
        assert_eq!(canonical_name("UpNDown"), Some("up_n_down"));
        assert_eq!(canonical_name("catch"), None);
        assert_eq!(canonical_name(""), None);
        assert_eq!(canonical_name("pacman"), None, "not in ALE 0.6");
    }

    #[test]
    fn known_roms_are_unique_and_well_formed() {
        let mut md5s: Vec<&str> = KNOWN_ROMS.iter().map(|(_, m)| *m).collect();
        md5s.sort();
        md5s.dedup();
        assert_eq!(md5s.len(), KNOWN_ROMS.len());
        assert!(md5s.iter().all(|m| m.len() == 32 && m.chars().all(|c| c.is_ascii_hexdigit())));
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn unknown_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("gala-rom-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pong.bin");
        std::fs::write(&p, b"not a rom").unwrap();
        let err = identify(&p).unwrap_err().to_string();
        assert!(err.contains("refusing ROM") && err.contains("pong"), "{err}");
        assert!(identify(&dir.join("missing.bin")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
