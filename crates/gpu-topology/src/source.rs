//! Choosing a topology source at run time from the `--topology` text.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::file::FileSource;
use crate::sim::SimSource;
use crate::smi::SmiSource;
use crate::{TopologyError, TopologySource};

/// Which backend to read, as `--topology` spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologySpec {
    /// `nvml`: the real machine.
    Nvml,
    /// `sim:NAME`: a built-in simulated machine.
    Sim(String),
    /// `file:PATH`: a TOML fixture or a JSON snapshot.
    File(PathBuf),
    /// `smi:PATH`: the text of `nvidia-smi -L`.
    Smi(PathBuf),
}

const GRAMMAR: &str = "expected nvml, sim:NAME, file:PATH or smi:PATH";

impl FromStr for TopologySpec {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Self, TopologyError> {
        let invalid = |reason: &str| TopologyError::InvalidSource { spec: s.to_owned(), reason: reason.to_owned() };
        if s == "nvml" {
            return Ok(TopologySpec::Nvml);
        }
        let (scheme, rest) = s.split_once(':').ok_or_else(|| invalid(GRAMMAR))?;
        if rest.is_empty() {
            return Err(invalid(&format!("`{scheme}:` needs a name or path after the colon")));
        }
        match scheme {
            "sim" => Ok(TopologySpec::Sim(rest.to_owned())),
            "file" => Ok(TopologySpec::File(rest.into())),
            "smi" => Ok(TopologySpec::Smi(rest.into())),
            _ => Err(invalid(GRAMMAR)),
        }
    }
}

impl fmt::Display for TopologySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologySpec::Nvml => f.write_str("nvml"),
            TopologySpec::Sim(name) => write!(f, "sim:{name}"),
            TopologySpec::File(path) => write!(f, "file:{}", path.display()),
            TopologySpec::Smi(path) => write!(f, "smi:{}", path.display()),
        }
    }
}

impl TopologySpec {
    /// Whether this is the real machine (and so real devices), rather than a description.
    pub fn is_real(&self) -> bool {
        matches!(self, TopologySpec::Nvml)
    }

    /// Opens the backend.
    ///
    /// # Errors
    /// [`TopologyError::UnknownPreset`] for a `sim:` name that does not exist,
    /// [`TopologyError::NvmlNotCompiled`] for `nvml` in a build without the `nvml` feature,
    /// or a fixture error for a broken preset. Files are read when the snapshot is taken.
    pub fn open(&self) -> Result<Box<dyn TopologySource>, TopologyError> {
        Ok(match self {
            TopologySpec::Nvml => open_nvml()?,
            TopologySpec::Sim(name) => Box::new(SimSource::preset(name)?),
            TopologySpec::File(path) => Box::new(FileSource::new(path.clone())),
            TopologySpec::Smi(path) => Box::new(SmiSource::new(path.clone())),
        })
    }
}

#[cfg(feature = "nvml")]
fn open_nvml() -> Result<Box<dyn TopologySource>, TopologyError> {
    Ok(Box::new(crate::nvml::NvmlSource::new()))
}

#[cfg(not(feature = "nvml"))]
fn open_nvml() -> Result<Box<dyn TopologySource>, TopologyError> {
    Err(TopologyError::NvmlNotCompiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_and_prints_it_back() {
        for text in ["nvml", "sim:dgx-a100", "file:machine.toml", "smi:host-a.txt", "file:C:/x.json"] {
            let spec: TopologySpec = text.parse().expect(text);
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        for (text, expected) in [("gpu", "expected nvml"), ("sim:", "needs a name"), ("nfs:/x", "expected nvml")] {
            let err = text.parse::<TopologySpec>().expect_err(text);
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }
}
