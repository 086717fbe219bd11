//! Picking the compute device: a hardware wgpu adapter when there is one, else flex on the CPU.
//!
//! `AGENTOS_DEVICE` overrides the choice: `auto`, `flex` (CPU), `wgpu` (best wgpu adapter),
//! `vulkan` (a hardware Vulkan adapter), `wgpu-cpu` (a software Vulkan/wgpu adapter such as
//! Mesa's lavapipe; slow, for correctness checks on machines without a GPU).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use burn::tensor::{Device, DeviceKind};
use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};

/// Which device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum DeviceChoice {
    /// A hardware GPU through wgpu if one is present, else flex.
    #[default]
    Auto,
    /// burn's flex backend on the CPU.
    Flex,
    /// wgpu on its default adapter (a GPU when there is one).
    Wgpu,
    /// wgpu on a hardware Vulkan adapter; an error if there is none.
    Vulkan,
    /// wgpu on a CPU (software) adapter.
    WgpuCpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => DeviceChoice::Auto,
            "flex" | "cpu" => DeviceChoice::Flex,
            "wgpu" | "gpu" => DeviceChoice::Wgpu,
            "vulkan" => DeviceChoice::Vulkan,
            "wgpu-cpu" | "software" | "lavapipe" => DeviceChoice::WgpuCpu,
            other => {
                return Err(KernelError::Device(format!(
                    "unknown device {other:?}; use auto, flex, wgpu, vulkan or wgpu-cpu"
                )));
            }
        })
    }
}

impl DeviceChoice {
    /// The choice from `AGENTOS_DEVICE`, or `Auto` when it is unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var("AGENTOS_DEVICE") {
            Ok(v) => v.parse(),
            Err(_) => Ok(DeviceChoice::Auto),
        }
    }
}

/// A device ready for tensors, with a human-readable account of the choice.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    pub device: Device,
    /// Short name: `flex`, `wgpu`, `wgpu-cpu`.
    pub name: String,
    /// The adapter (for wgpu) or backend description.
    pub description: String,
    /// Why this device was chosen.
    pub reason: String,
}

/// Resolves `choice` to a device. wgpu devices are initialised once per process and reused.
pub fn select_device(choice: DeviceChoice) -> Result<SelectedDevice> {
    static CACHE: OnceLock<Mutex<HashMap<DeviceChoice, SelectedDevice>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache
        .lock()
        .map_err(|_| KernelError::Device("device cache poisoned".into()))?;
    if let Some(d) = cache.get(&choice) {
        return Ok(d.clone());
    }
    let selected = resolve(choice)?;
    tracing::info!(
        device = %selected.name,
        adapter = %selected.description,
        reason = %selected.reason,
        "compute device selected"
    );
    cache.insert(choice, selected.clone());
    Ok(selected)
}

fn flex(reason: String) -> SelectedDevice {
    SelectedDevice {
        device: Device::flex(),
        name: "flex".into(),
        description: format!(
            "burn flex on the CPU ({} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        reason,
    }
}

fn resolve(choice: DeviceChoice) -> Result<SelectedDevice> {
    match choice {
        DeviceChoice::Flex => Ok(flex("AGENTOS_DEVICE/config asked for flex".into())),
        DeviceChoice::Auto if !may_have_gpu() => Ok(flex(
            "no GPU device node (/dev/dri, /dev/nvidia*, /dev/dxg), so no hardware adapter to probe".into(),
        )),
        DeviceChoice::Auto => match hardware_adapter() {
            Some(info) => init_wgpu(
                DeviceKind::DefaultDevice,
                "wgpu",
                info,
                "a hardware GPU adapter is present".into(),
            ),
            None => Ok(flex("no hardware GPU adapter found (Vulkan/Metal/DX12)".into())),
        },
        DeviceChoice::Wgpu => {
            let info = hardware_adapter().unwrap_or_else(|| "default wgpu adapter".into());
            init_wgpu(DeviceKind::DefaultDevice, "wgpu", info, "wgpu was asked for".into())
        }
        DeviceChoice::Vulkan => match hardware_adapter() {
            Some(info) => init_wgpu(DeviceKind::DefaultDevice, "wgpu", info, "vulkan was asked for".into()),
            None => Err(KernelError::Device(
                "vulkan was asked for but no hardware Vulkan adapter is present; \
                 use AGENTOS_DEVICE=wgpu-cpu for software Vulkan or flex for the CPU backend"
                    .into(),
            )),
        },
        DeviceChoice::WgpuCpu => init_wgpu(
            DeviceKind::Cpu,
            "wgpu-cpu",
            software_adapter().unwrap_or_else(|| "software adapter".into()),
            "a software (CPU) wgpu adapter was asked for".into(),
        ),
    }
}

fn init_wgpu(kind: DeviceKind, name: &str, description: String, reason: String) -> Result<SelectedDevice> {
    let device = Device::wgpu_options()
        .device_kind(kind)
        .init()
        .map_err(|e| KernelError::Device(format!("cannot initialise wgpu ({name}): {e}")))?;
    Ok(SelectedDevice {
        device,
        name: name.into(),
        description,
        reason,
    })
}

fn adapters() -> Vec<burn::tensor::wgpu::wgpu::AdapterInfo> {
    use burn::tensor::wgpu::wgpu;
    // Enumeration is async; it runs on a thread of its own so that the small runtime driving
    // it is never started inside the caller's (an engine loaded from async code would
    // otherwise find no adapter at all). A panic there (a broken driver) means no adapters,
    // not a process taken down.
    let enumerate = || {
        let instance = wgpu::Instance::default();
        let backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
        let rt = tokio::runtime::Builder::new_current_thread().build().ok()?;
        let adapters = rt.block_on(instance.enumerate_adapters(backends));
        Some(adapters.iter().map(|a| a.get_info()).collect::<Vec<_>>())
    };
    std::thread::Builder::new()
        .name("agentos-adapters".into())
        .spawn(enumerate)
        .ok()
        .and_then(|thread| thread.join().ok())
        .flatten()
        .unwrap_or_default()
}

/// Every Vulkan, Metal or DX12 adapter this machine offers, described as
/// `name (device type, backend)`: hardware GPUs and software ones such as Mesa's lavapipe.
/// Safe to call from async code.
pub fn adapter_descriptions() -> Vec<String> {
    adapters().iter().map(describe).collect()
}

fn describe(a: &burn::tensor::wgpu::wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", a.name, a.device_type, a.backend)
}

/// Whether this machine may have a GPU that wgpu could use. On Linux every hardware Vulkan or
/// GL driver works through a device node (a DRM card or render node, NVIDIA's `/dev/nvidia*`,
/// WSL's `/dev/dxg`); where there is none, probing the adapters would only load the software
/// drivers (Mesa's, some 60 MB resident for the life of the process) to find no GPU.
fn may_have_gpu() -> bool {
    #[cfg(target_os = "linux")]
    {
        has_gpu_device_node(std::path::Path::new("/dev"))
    }
    #[cfg(not(target_os = "linux"))]
    true
}

/// Whether `dev` (a `/dev` directory) holds a DRM card or render node, an NVIDIA device or
/// WSL's `dxg`.
#[cfg(any(target_os = "linux", test))]
fn has_gpu_device_node(dev: &std::path::Path) -> bool {
    let has_entry = |dir: &std::path::Path, prefixes: &[&str]| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                prefixes.iter().any(|prefix| name.starts_with(prefix))
            })
        })
    };
    has_entry(&dev.join("dri"), &["renderD", "card"]) || has_entry(dev, &["nvidia", "dxg"])
}

/// A description of the first hardware (non-CPU) adapter, if any.
fn hardware_adapter() -> Option<String> {
    use burn::tensor::wgpu::wgpu::DeviceType;
    adapters()
        .into_iter()
        .find(|a| {
            matches!(
                a.device_type,
                DeviceType::DiscreteGpu | DeviceType::IntegratedGpu | DeviceType::VirtualGpu
            )
        })
        .map(|a| describe(&a))
}

fn software_adapter() -> Option<String> {
    use burn::tensor::wgpu::wgpu::DeviceType;
    adapters()
        .into_iter()
        .find(|a| a.device_type == DeviceType::Cpu)
        .map(|a| describe(&a))
}

#[cfg(test)]
mod tests {
    use super::has_gpu_device_node;

    #[test]
    fn a_gpu_is_assumed_only_where_a_gpu_device_node_exists() {
        let dev = tempfile::tempdir().unwrap();
        let touch = |name: &str| std::fs::write(dev.path().join(name), b"").unwrap();
        touch("null");
        touch("tty0");
        assert!(!has_gpu_device_node(dev.path()));
        std::fs::create_dir(dev.path().join("dri")).unwrap();
        assert!(!has_gpu_device_node(dev.path()), "an empty /dev/dri has no GPU");
        touch("dri/renderD128");
        assert!(has_gpu_device_node(dev.path()));
        for node in ["nvidia0", "dxg"] {
            let other = tempfile::tempdir().unwrap();
            std::fs::write(other.path().join(node), b"").unwrap();
            assert!(has_gpu_device_node(other.path()), "{node}");
        }
    }
}
