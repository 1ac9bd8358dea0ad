//! A [`ClusterSpec`] as processes: the scheduler (`dask scheduler`) and one Dask worker process
//! per worker spec (`dask cuda worker` where the spec's workers are dask-cuda's, else
//! `dask worker`), for the launcher's supervisor.
//!
//! It decides nothing about the cluster (that is [`super::spec`]'s); it owns what only a front
//! end running processes needs: the command lines, the Dask settings as `DASK_*` variables, how
//! a nanny starts its worker (forked, except over UCX), how long a worker waits for a scheduler
//! that does not answer, and where the scheduler's plugins are loaded from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use super::facts::PythonFacts;
use super::python::NO_CWD_IMPORTS;
use super::spec::{ClusterSpec, DaskConfig, WorkerSpec, dask_env_name};
use super::tls::TlsFiles;
use crate::ProcessSpec;

/// How long a worker waits for an unreachable scheduler before it gives up (`--death-timeout`).
pub const DEATH_TIMEOUT_SECONDS: u32 = 30;

/// What turning a spec into processes needs beyond the spec.
#[derive(Debug, Clone, Copy)]
pub struct Processes<'a> {
    /// The interpreter.
    pub python: &'a OsString,
    /// What it has.
    pub facts: &'a PythonFacts,
    /// The scheduler file a local scheduler writes and its workers read.
    pub scheduler_file: &'a Path,
    /// The processes' working directory (the spec's `local_directory`).
    pub local_directory: &'a Path,
    /// The TLS credentials, where the spec speaks TLS.
    pub tls: Option<&'a TlsFiles>,
    /// Further options for every worker (after `--` on the command line): appended after ours,
    /// so that where Dask's CLI takes an option's last value, the user's wins.
    pub worker_options: &'a [OsString],
}

/// The processes of `spec`: the scheduler first, where the spec has one, then the workers.
pub fn processes(spec: &ClusterSpec, with: &Processes<'_>) -> Vec<ProcessSpec> {
    let mut all = Vec::new();
    if let Some(scheduler) = &spec.scheduler {
        let mut args: Vec<OsString> =
            vec!["-c".into(), cli_entry("distributed.cli.dask_scheduler", "main", "dask-scheduler").into()];
        args.extend(["--scheduler-file".into(), with.scheduler_file.as_os_str().to_owned()]);
        args.push(if scheduler.dashboard.is_some() { "--dashboard" } else { "--no-dashboard" }.into());
        args.extend(["--dashboard-address".into(), scheduler.http_address.clone().into()]);
        args.extend(["--host".into(), scheduler.host.clone().into(), "--port".into(), "0".into()]);
        args.extend(["--protocol".into(), scheduler.protocol.scheme().into()]);
        if let Some(tls) = with.tls {
            args.extend(tls.args());
        }
        for preload in &scheduler.preload {
            args.extend(["--preload".into(), preload.into()]);
        }
        all.push(ProcessSpec {
            name: "scheduler".into(),
            program: with.python.clone(),
            args,
            env: env_of(&BTreeMap::new(), &scheduler.dask_config),
            cpu_affinity: None,
            essential: true,
            cwd: Some(with.local_directory.to_owned()),
        });
    }
    all.extend(spec.workers.iter().map(|w| worker(spec, w, with)));
    all
}

/// The environment of a process: `env`, and `config` as the variables Dask reads it from.
fn env_of(env: &BTreeMap<String, String>, config: &DaskConfig) -> BTreeMap<String, String> {
    let mut all = env.clone();
    all.extend(config.iter().map(|(k, v)| (dask_env_name(k), v.env_value())));
    all
}

fn worker(spec: &ClusterSpec, w: &WorkerSpec, with: &Processes<'_>) -> ProcessSpec {
    // The CLI entry points directly: `python -m dask` imports every CLI plugin first.
    let mut args: Vec<OsString> = vec!["-c".into()];
    if spec.dask_cuda {
        args.push(cli_entry("dask_cuda.cli", "worker", "dask-cuda-worker").into());
    } else {
        args.push(cli_entry("distributed.cli.dask_worker", "main", "dask-worker").into());
    }
    match &spec.join {
        Some(address) => args.push(address.into()),
        None => args.extend(["--scheduler-file".into(), with.scheduler_file.as_os_str().to_owned()]),
    }
    let resources = w.resources.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    args.extend(["--name".into(), w.name.clone().into(), "--nthreads".into(), w.threads.to_string().into()]);
    args.extend(["--resources".into(), resources.into(), "--no-dashboard".into()]);
    args.extend(["--dashboard-address".into(), w.http_address.clone().into()]);
    args.extend(["--local-directory".into(), with.local_directory.as_os_str().to_owned()]);
    args.extend(["--death-timeout".into(), DEATH_TIMEOUT_SECONDS.to_string().into()]);
    args.extend(["--memory-limit".into(), w.memory_limit_bytes.unwrap_or(0).to_string().into()]);
    // The nanny forks its worker instead of spawning a fresh interpreter that imports Dask (and
    // dask-cuda, pandas, ...) all over again: that halves start-up. The nanny never touches CUDA
    // (dask-cuda reads the device through NVML), so forking is safe, except over UCX: the nanny
    // has set UCX up to listen, and UCX does not survive a fork (the forked worker never starts;
    // seen on the H100 with distributed-ucxx 0.52).
    let method = if spec.speaks_ucx() { "spawn" } else { "fork" };
    if spec.dask_cuda {
        let limit = w.device_memory_limit_bytes.unwrap_or(0);
        args.extend(["--device-memory-limit".into(), limit.to_string().into()]);
        args.extend(["--multiprocessing-method".into(), method.into()]);
        if let Some(bytes) = w.rmm_pool_bytes {
            args.extend(["--rmm-pool-size".into(), bytes.to_string().into()]);
        }
    } else {
        args.extend(["--nworkers".into(), "1".into()]);
    }
    if let Some(host) = &w.host {
        args.extend(["--host".into(), host.clone().into()]);
    }
    // TCP is Dask's default: named only where it is not.
    if let Some(protocol) = spec.protocol.filter(|p| *p != super::protocol::Protocol::Tcp) {
        args.extend(["--protocol".into(), protocol.scheme().into()]);
    }
    if let Some(tls) = with.tls {
        args.extend(tls.args());
    }
    args.extend(with.worker_options.iter().cloned());
    let mut env = env_of(&w.env, &w.dask_config);
    env.insert(dask_env_name("distributed.worker.multiprocessing-method"), method.into());
    let cpus = (!w.cpus.is_empty()).then(|| w.cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(","));
    ProcessSpec {
        name: w.name.clone(),
        program: with.python.clone(),
        args,
        env,
        cpu_affinity: cpus,
        essential: false,
        cwd: Some(with.local_directory.to_owned()),
    }
}

/// Python that runs a Dask CLI command with the arguments after `-c CODE`. `python -m dask`
/// would import every installed CLI plugin (dask-cuda's among them, about 2 s on the H100
/// machine) before starting even a scheduler.
fn cli_entry(module: &str, function: &str, program: &str) -> String {
    format!("{NO_CWD_IMPORTS}sys.argv[0] = '{program}'; from {module} import {function}; sys.exit({function}())")
}

#[cfg(test)]
mod tests {
    use super::super::facts::HostFacts;
    use super::super::protocol::{Credentials, ProtocolRequest};
    use super::super::spec::{Request, SchedulerRequest, cluster_spec};
    use super::*;

    fn a30() -> (gpu_topology::Snapshot, cluster_core::Plan) {
        let spec: gpu_topology::TopologySpec = "sim:a30".parse().expect("spec");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        let snapshot = rt.block_on(spec.open().expect("open").snapshot()).expect("snapshot");
        let plan = cluster_core::plan(&snapshot, &cluster_core::PlanRequest::default()).expect("plan");
        (snapshot, plan)
    }

    fn facts(dask_cuda: bool, ucxx: bool) -> PythonFacts {
        PythonFacts { distributed: "x".into(), dask_cuda, ucxx, ..PythonFacts::default() }
    }

    /// The processes of the simulated A30's cluster (`topology` says whether it stands for real
    /// devices) for `request`.
    fn run(
        topology: &str,
        request: impl FnOnce(&mut Request),
        python: &PythonFacts,
    ) -> (ClusterSpec, Vec<ProcessSpec>) {
        let (snapshot, plan) = a30();
        let output = crate::plan_paths::PlanOutput::new(&snapshot, &plan);
        let mut r = Request::new(topology.parse().expect("topology"), SchedulerRequest::Local, "/private/dir");
        r.credentials = Credentials::CanGenerate;
        request(&mut r);
        let host = HostFacts { memory_bytes: Some(64 << 30), cpus: (0..64).collect() };
        let spec = cluster_spec(&output, &r, python, &host).expect("spec");
        let python_program = OsString::from("python3");
        let with = Processes {
            python: &python_program,
            facts: python,
            scheduler_file: Path::new("/private/dir/scheduler.json"),
            local_directory: Path::new("/private/dir"),
            tls: None,
            worker_options: &[],
        };
        let all = processes(&spec, &with);
        (spec, all)
    }

    fn args(spec: &ProcessSpec) -> Vec<String> {
        spec.args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn simulated_devices_never_meet_the_driver() {
        let (spec, all) = run("sim:a30", |_| {}, &facts(true, false));
        assert!(!spec.dask_cuda && spec.simulated);
        for worker in &all[1..] {
            let a = args(worker);
            assert!(a[1].contains("distributed.cli.dask_worker"), "plain dask worker: {a:?}");
            assert_eq!(worker.env.get("DASK_DISTRIBUTED__DIAGNOSTICS__NVML").map(String::as_str), Some("False"));
            // Never the shared scratch space, and no HTTP routes for strangers.
            assert_eq!(worker.env.get("DASK_TEMPORARY_DIRECTORY").map(String::as_str), Some("/private/dir"));
            assert_eq!(worker.env.get("DASK_DISTRIBUTED__WORKER__HTTP__ROUTES").map(String::as_str), Some("[]"));
            assert!(a.windows(2).any(|w| w == ["--local-directory", "/private/dir"]), "{a:?}");
            assert!(worker.cpu_affinity.is_none(), "a simulated machine's CPUs are not this one's");
        }
        let (spec, all) = run("nvml", |_| {}, &facts(true, false));
        assert!(spec.dask_cuda);
        assert!(args(&all[1])[1].contains("dask_cuda"));
        assert!(!all[1].env.contains_key("DASK_DISTRIBUTED__DIAGNOSTICS__NVML"));
    }

    #[test]
    fn options_after_the_separator_reach_every_worker_last() {
        let (snapshot, plan) = a30();
        let output = crate::plan_paths::PlanOutput::new(&snapshot, &plan);
        let mut r = Request::new("sim:a30".parse().expect("topology"), SchedulerRequest::Local, "/d");
        r.credentials = Credentials::CanGenerate;
        let python = facts(false, false);
        let spec = cluster_spec(&output, &r, &python, &HostFacts::default()).expect("spec");
        let program = OsString::from("python3");
        let options: Vec<OsString> = vec!["--nthreads".into(), "4".into(), "--lifetime".into(), "1h".into()];
        let with = Processes {
            python: &program,
            facts: &python,
            scheduler_file: Path::new("/d/s.json"),
            local_directory: Path::new("/d"),
            tls: None,
            worker_options: &options,
        };
        for worker in &processes(&spec, &with)[1..] {
            let a = args(worker);
            assert_eq!(&a[a.len() - 4..], ["--nthreads", "4", "--lifetime", "1h"], "{a:?}");
            // Ours come first: Dask's CLI keeps an option's last value, so the user's wins.
            let ours = a.iter().position(|x| x == "--nthreads").expect("ours");
            assert!(ours < a.len() - 4, "{a:?}");
        }
    }

    #[test]
    fn nannies_fork_their_worker_except_over_ucx() {
        let method = |spec: &ProcessSpec| {
            let a = args(spec);
            let flag = a.windows(2).find(|w| w[0] == "--multiprocessing-method").map(|w| w[1].clone());
            let env = spec.env.get("DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD").cloned();
            assert_eq!(flag.as_ref().or(env.as_ref()), env.as_ref(), "the flag and the environment agree");
            env.unwrap_or_default()
        };
        let (_, all) = run("nvml", |_| {}, &facts(true, true));
        assert_eq!(method(&all[1]), "fork", "start-up halves when the nanny forks");
        // UCX, set up by the nanny to listen, does not survive a fork: the worker never started.
        let (_, all) = run(
            "nvml",
            |r| {
                r.protocol = ProtocolRequest::Ucx;
                r.insecure = true;
            },
            &facts(true, true),
        );
        assert_eq!(method(&all[1]), "spawn");
        let (_, all) = run(
            "nvml",
            |r| r.scheduler = SchedulerRequest::Join { address: "ucx://10.0.0.1:8786".into() },
            &facts(true, true),
        );
        assert_eq!(method(&all[0]), "spawn");
    }

    #[test]
    fn joining_workers_get_the_checked_address_not_the_file() {
        let (spec, all) = run(
            "sim:a30",
            |r| r.scheduler = SchedulerRequest::Join { address: "tls://10.0.0.1:8786".into() },
            &facts(false, false),
        );
        assert!(spec.scheduler.is_none());
        for worker in &all {
            let a = args(worker);
            assert!(
                a.contains(&"tls://10.0.0.1:8786".to_owned()) && !a.contains(&"--scheduler-file".to_owned()),
                "{a:?}"
            );
        }
    }

    #[test]
    fn the_scheduler_serves_a_dashboard_only_when_asked() {
        let python = PythonFacts { bokeh: true, ..facts(false, false) };
        let (_, all) = run("sim:a30", |_| {}, &python);
        let scheduler = &all[0];
        assert!(args(scheduler).contains(&"--no-dashboard".to_owned()));
        assert_eq!(scheduler.env.get("DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES").map(String::as_str), Some("[]"));
        // Where the package is missing, its plugins come from the file of the same source.
        assert!(args(scheduler).windows(2).any(|w| w == ["--preload", "/private/dir/gpucluster_scheduler.py"]));
        let (_, all) = run("sim:a30", |r| r.dashboard = Some(":8787".into()), &python);
        let a = args(&all[0]);
        // A bare port is this host's, not every interface's (as Dask would take it).
        assert!(a.windows(3).any(|w| w == ["--dashboard", "--dashboard-address", "127.0.0.1:8787"]), "{a:?}");
        assert!(!a.contains(&"--no-dashboard".to_owned()));
        assert!(!all[0].env.contains_key("DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"), "distributed's routes served");
        let with_package = PythonFacts { gpucluster: true, ..python };
        let (_, all) = run("sim:a30", |_| {}, &with_package);
        assert!(args(&all[0]).windows(2).any(|w| w == ["--preload", "gpucluster.scheduler"]));
    }

    #[test]
    fn every_process_speaking_ucx_makes_its_cuda_context_first() {
        // Without it, distributed-ucxx starts UCX before CUDA when UCX_TLS is unset or excludes
        // cuda_ipc, and device memory is not recognised.
        let key = "DASK_DISTRIBUTED_UCXX__CREATE_CUDA_CONTEXT";
        let (_, all) = run("nvml", |_| {}, &facts(false, true));
        assert!(all.iter().all(|p| !p.env.contains_key(key)), "only over UCX");
        let ucx = |r: &mut Request| {
            r.protocol = ProtocolRequest::Ucx;
            r.insecure = true;
        };
        let (_, all) = run("nvml", ucx, &facts(false, true));
        for p in &all {
            assert_eq!(p.env.get(key).map(String::as_str), Some("True"), "{}", p.name);
        }
        // Simulated devices have no CUDA to make a context on.
        let (_, all) = run("sim:a30", ucx, &facts(false, true));
        assert!(all.iter().all(|p| !p.env.contains_key(key)));
    }
}
