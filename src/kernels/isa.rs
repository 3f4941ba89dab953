//! Which instruction set the kernels run, chosen at run time from CPUID (and capped by
//! `FERROFORMERS_ISA` or [`set_isa_limit`], to compare or test the paths on one machine), and
//! what the tests demand of it.

use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction sets the kernels have paths for, from the least to the most capable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, auto-vectorised for the target the crate was compiled for.
    Portable,
    /// AVX2 with FMA (Haswell, Zen 1 and later).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 F/BW/VL with BF16 (`vdpbf16ps`) and VNNI (`vpdpbusd`): Zen 4, Zen 5, Sapphire
    /// Rapids and later. A CPU with AVX-512 but without BF16 or VNNI (Skylake-X, Ice Lake)
    /// runs the AVX2 kernels: the bf16 and int8 kernels are this path's reason to be.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The best the CPU has, or portable code when `portable` is asked for.
    pub fn detect(portable: bool) -> Self {
        if portable {
            return Isa::Portable;
        }
        Self::best()
    }

    /// The best instruction set of this CPU, within the limit set by [`set_isa_limit`] or
    /// `FERROFORMERS_ISA` (`portable`, `avx2`, `avx512`).
    pub fn best() -> Self {
        Self::of_cpu().min(isa_limit())
    }

    /// The best instruction set of this CPU, whatever the limit.
    pub fn of_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            let avx512 = has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("avx512bf16")
                && has!("avx512vnni");
            if avx2 && avx512 {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every instruction set this CPU can run, portable first: what the tests run in turn.
    pub fn available() -> Vec<Isa> {
        let best = Self::of_cpu();
        Self::all().into_iter().filter(|&isa| isa <= best).collect()
    }

    /// Every path the kernels have on this target.
    pub fn all() -> Vec<Isa> {
        PATHS.to_vec()
    }

    /// The instruction set the kernels run now: the best within the limit, or portable code
    /// in the `portable` kernel mode.
    pub fn current() -> Self {
        Self::detect(super::kernel_mode() == super::KernelMode::Portable)
    }

    /// Whether the AVX-512 kernels may run.
    pub fn has_avx512(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self == Isa::Avx512;
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Whether the AVX2 kernels may run (AVX-512 machines have AVX2 too).
    pub fn has_avx2(self) -> bool {
        self != Isa::Portable
    }

    /// The name `FERROFORMERS_EXPECT_ISA` and reports use: `portable`, `avx2`, `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512",
        }
    }
}

/// [`Isa::all`] without allocating: the kernels read the limit on every call.
const PATHS: &[Isa] = &[
    Isa::Portable,
    #[cfg(target_arch = "x86_64")]
    Isa::Avx2,
    #[cfg(target_arch = "x86_64")]
    Isa::Avx512,
];

/// The limit: 0 = not read yet, else the index in [`Isa::all`] + 1.
static LIMIT: AtomicU8 = AtomicU8::new(0);

fn isa_limit() -> Isa {
    let all = PATHS;
    match LIMIT.load(Ordering::Relaxed) {
        0 => {
            let named = std::env::var("FERROFORMERS_ISA").ok();
            let limit = named
                .and_then(|name| all.iter().copied().find(|isa| isa.name() == name.trim()))
                .unwrap_or(all[all.len() - 1]);
            set_isa_limit(limit);
            tracing::info!(
                isa = Isa::of_cpu().min(limit).name(),
                cpu = Isa::of_cpu().name(),
                limit = limit.name(),
                "the best instruction set for the kernels (FERROFORMERS_ISA caps it)"
            );
            limit
        }
        index => all[usize::from(index) - 1],
    }
}

/// Run no kernel above `limit` in this process (as `FERROFORMERS_ISA` does): to compare the
/// paths on one machine, or to test each in turn.
pub fn set_isa_limit(limit: Isa) {
    let index = PATHS.iter().position(|&isa| isa == limit).unwrap_or(0);
    LIMIT.store(index as u8 + 1, Ordering::Relaxed);
}

/// For tests of one instruction set's path: `true` when this CPU can run `isa`, saying so on
/// stderr either way. When it cannot, the test is skipped (`false`), unless
/// `FERROFORMERS_EXPECT_ISA` names `isa` or a more capable set: then the machine was expected
/// to run this path, and skipping it would hide an untested kernel, so this panics. CI sets
/// the variable from the CPU's flags.
#[doc(hidden)]
pub fn test_can_run(isa: Isa, test: &str) -> bool {
    let best = Isa::of_cpu();
    if isa <= best {
        eprintln!("{test}: running the {} path", isa.name());
        return true;
    }
    let expected = std::env::var("FERROFORMERS_EXPECT_ISA").unwrap_or_default();
    let demanded = Isa::all()
        .into_iter()
        .find(|candidate| candidate.name() == expected.trim());
    if let Some(demanded) = demanded {
        assert!(
            isa > demanded,
            "{test}: FERROFORMERS_EXPECT_ISA={expected} but this CPU's best is {}: the {} path \
             cannot run here",
            best.name(),
            isa.name()
        );
    }
    eprintln!(
        "{test}: SKIPPED the {} path: this CPU's best is {}",
        isa.name(),
        best.name()
    );
    false
}

/// The kernel paths this CPU cannot run, so that the tests skip, one line each
/// (`skipped: avx512 (...)`), or `no kernel path skipped`. CI prints it uncaptured
/// (`tests/kernel_paths.rs`, `skipped_paths`): a skip said only on a passing test's stderr
/// is captured, and no one sees it.
#[doc(hidden)]
pub fn skipped_paths_summary() -> String {
    skipped_paths_below(Isa::of_cpu())
}

/// [`skipped_paths_summary`] for a CPU whose best instruction set is `best`.
fn skipped_paths_below(best: Isa) -> String {
    let lines: Vec<String> = PATHS
        .iter()
        .filter(|&&isa| isa > best)
        .map(|&isa| {
            format!(
                "skipped: {} (needs {}; this CPU's best is {})",
                isa.name(),
                isa.features(),
                best.name()
            )
        })
        .collect();
    if lines.is_empty() {
        "no kernel path skipped".to_string()
    } else {
        lines.join("\n")
    }
}

impl Isa {
    /// The CPU features this path needs, as [`Isa::of_cpu`] checks them.
    fn features(self) -> &'static str {
        match self {
            Isa::Portable => "nothing",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2 and fma",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx2, fma, avx512f, avx512bw, avx512vl, avx512bf16 and avx512vnni",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line per path above the CPU's best, the most capable last; none on a CPU that
    /// runs them all.
    #[test]
    fn the_summary_names_every_path_above_the_cpus_best() {
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(skipped_paths_below(Isa::Avx512), "no kernel path skipped");
            assert_eq!(
                skipped_paths_below(Isa::Avx2),
                "skipped: avx512 (needs avx2, fma, avx512f, avx512bw, avx512vl, avx512bf16 and \
                 avx512vnni; this CPU's best is avx2)"
            );
            let summary = skipped_paths_below(Isa::Portable);
            let lines: Vec<&str> = summary.lines().collect();
            assert_eq!(lines.len(), 2, "{lines:?}");
            assert!(
                lines[0].starts_with("skipped: avx2 (needs avx2 and fma;"),
                "{lines:?}"
            );
            assert!(lines[1].starts_with("skipped: avx512 ("), "{lines:?}");
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(skipped_paths_below(Isa::Portable), "no kernel path skipped");
        // This CPU: exactly the paths above its best.
        let best = Isa::of_cpu();
        let skipped = Isa::all().into_iter().filter(|&isa| isa > best).count();
        let summary = skipped_paths_summary();
        assert_eq!(
            summary
                .lines()
                .filter(|line| line.starts_with("skipped: "))
                .count(),
            skipped,
            "{summary}"
        );
    }

    #[test]
    fn the_expected_isa_is_what_this_cpu_runs() {
        let best = Isa::of_cpu();
        eprintln!("this CPU's best instruction set: {}", best.name());
        if let Ok(expected) = std::env::var("FERROFORMERS_EXPECT_ISA") {
            assert_eq!(
                best.name(),
                expected.trim(),
                "FERROFORMERS_EXPECT_ISA names another instruction set than this CPU's best"
            );
        }
        assert_eq!(Isa::available().last(), Some(&best));
        assert_eq!(Isa::available()[0], Isa::Portable);
    }
}
