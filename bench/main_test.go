package bench

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/strata-fs/strata/bench/target"
)

// setup holds what TestMain prepares when benchmarks are requested.
var setup struct {
	// root is a temporary directory for layers, mounts and the binary.
	root string
	// bins are the programs the targets run; buildErr says why strata's
	// binary is missing.
	bins     target.Binaries
	buildErr error
	// targets are the implementations to benchmark (STRATA_BENCH_TARGETS).
	targets []target.Kind
	// registry holds every live mount, so none survives the run.
	registry target.Registry
}

func TestMain(m *testing.M) {
	flag.Parse()
	if !benchmarking() {
		os.Exit(m.Run())
	}
	code, err := runBenchmarks(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// benchmarking reports whether -test.bench selects anything; only then is
// the heavy setup worth doing.
func benchmarking() bool {
	f := flag.Lookup("test.bench")
	return f != nil && f.Value.String() != ""
}

func runBenchmarks(m *testing.M) (int, error) {
	root, err := os.MkdirTemp("", "strata-bench-")
	if err != nil {
		return 1, fmt.Errorf("temp dir: %w", err)
	}
	setup.root = root
	setup.targets = targetsFromEnv()
	setup.bins.FuseOverlayfs = "fuse-overlayfs"
	setup.bins.Strata, setup.buildErr = buildStrata(root)
	code := m.Run()
	unmountErr := setup.registry.UnmountAll()
	if err := os.RemoveAll(root); err != nil {
		return code, fmt.Errorf("remove %s: %w", root, err)
	}
	return code, unmountErr
}

// targetsFromEnv reads STRATA_BENCH_TARGETS, a comma-separated list of
// strata, overlayfs and fuse-overlayfs; the default is strata alone.
func targetsFromEnv() []target.Kind {
	v := os.Getenv("STRATA_BENCH_TARGETS")
	if v == "" {
		return []target.Kind{target.Strata}
	}
	var kinds []target.Kind
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			kinds = append(kinds, target.Kind(s))
		}
	}
	return kinds
}

func buildStrata(dir string) (string, error) {
	bin := filepath.Join(dir, "strata")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/strata-fs/strata/cmd/strata").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/strata: %w: %s", err, out)
	}
	return bin, nil
}

// forEachTarget runs body as a sub-benchmark per target.
func forEachTarget(b *testing.B, body func(b *testing.B, kind target.Kind)) {
	if os.Geteuid() != 0 {
		b.Skip("the benchmarks mount filesystems and need root")
	}
	for _, kind := range setup.targets {
		b.Run(string(kind), func(b *testing.B) { body(b, kind) })
	}
}

// once builds a layer set the first time a benchmark needs it.
type once struct {
	o   sync.Once
	err error
}

func (o *once) do(b *testing.B, build func() error) {
	b.Helper()
	o.o.Do(func() { o.err = build() })
	if o.err != nil {
		b.Fatal(o.err)
	}
}

// mountCount numbers mounts so each gets fresh directories.
var mountCount int

// mountFresh mounts lowers (topmost first) with a fresh upper and work
// directory; the upper starts as a copy of upperTemplate when that is not
// empty. Unmounting (also by b.Cleanup) removes the directories again.
func mountFresh(b *testing.B, kind target.Kind, lowers []string, upperTemplate string) *target.Mount {
	b.Helper()
	if kind == target.Strata && setup.buildErr != nil {
		b.Fatal(setup.buildErr)
	}
	mountCount++
	dir := filepath.Join(setup.root, "mounts", strconv.Itoa(mountCount))
	spec := target.Spec{Lowers: lowers, Upper: dir + "/upper", Work: dir + "/work", Dir: dir + "/mnt"}
	for _, d := range []string{spec.Work, spec.Dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	if err := makeUpper(upperTemplate, spec.Upper); err != nil {
		b.Fatal(err)
	}
	m, err := target.New(kind, spec, setup.bins, &setup.registry)
	if err != nil {
		_ = os.RemoveAll(dir)
		if kind != target.Strata && errors.Is(err, target.ErrCannotMount) {
			b.Skip(err) // a peer's limit (overlayfs: 500 layers) is a result, not a failure
		}
		b.Fatal(err)
	}
	b.Cleanup(func() { unmountAndRemove(b, m, dir) })
	return m
}

func unmountAndRemove(b *testing.B, m *target.Mount, dir string) {
	if err := m.Unmount(); err != nil {
		b.Error(err)
	}
	if !target.IsMounted(m.Dir) {
		if err := os.RemoveAll(dir); err != nil {
			b.Error(err)
		}
	}
}

func makeUpper(template, upper string) error {
	if template == "" {
		if err := os.MkdirAll(upper, 0o755); err != nil {
			return fmt.Errorf("upper: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(upper), 0o755); err != nil {
		return fmt.Errorf("upper: %w", err)
	}
	if out, err := exec.Command("cp", "-a", template, upper).CombinedOutput(); err != nil {
		return fmt.Errorf("upper from %s: %w: %s", template, err, out)
	}
	return nil
}

// daemonCPU is the CPU time in ns the mount's daemon's threads have used
// (the sum of /proc/PID/task/*/schedstat, which counts in ns), 0 without a
// daemon.
func daemonCPU(m *target.Mount) int64 {
	if m.DaemonPID == 0 {
		return 0
	}
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", m.DaemonPID))
	if err != nil {
		return 0
	}
	var total int64
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // the thread exited
		}
		if fields := strings.Fields(string(b)); len(fields) > 0 {
			ns, _ := strconv.ParseInt(fields[0], 10, 64)
			total += ns
		}
	}
	return total
}

// cpuMeter adds up a daemon's CPU time over the timed parts of a benchmark,
// across remounts.
type cpuMeter struct {
	total int64
	start int64
	m     *target.Mount
}

func (c *cpuMeter) begin(m *target.Mount) { c.m, c.start = m, daemonCPU(m) }
func (c *cpuMeter) end()                  { c.total += daemonCPU(c.m) - c.start }

// report adds daemon-cpu-ns/op when there is a daemon to measure.
func (c *cpuMeter) report(b *testing.B) { c.reportPer(b, 1, "daemon-cpu-ns/op") }

// reportPer adds the daemon's CPU time per unit, there being perOp units in
// one op.
func (c *cpuMeter) reportPer(b *testing.B, perOp int, unit string) {
	if c.m != nil && c.m.DaemonPID != 0 {
		b.ReportMetric(float64(c.total)/float64(b.N*perOp), unit)
	}
}
