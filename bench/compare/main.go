// Command compare runs the same workloads on strata and on its peers side
// by side and prints a markdown table of medians with ratios.
//
// Targets: a plain directory (the baseline: the image's merged tree copied
// to ext4, the bottom layer of a deep stack, or a fresh scratch directory
// for workloads that write), kernel overlayfs, fuse-overlayfs and strata.
// Every repetition of a workload gets a fresh mount with a fresh upper and
// work directory; the targets take turns (A B C D A B C D ...). "cold"
// means a fresh mount and dropped kernel caches; "warm" repeats the step on
// the same mount.
//
// The standard data set is built once into the cache directory (see
// dataset.go) and reused; a COMPLETE marker in each part says it is whole.
//
// Mounts never outlive the run: each is unmounted when its repetition ends,
// a registry unmounts whatever is left on an error or SIGINT/SIGTERM, and a
// new run first unmounts anything left under its scratch directory.
//
//	go run ./bench/compare -reps 3 -out results.md
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/strata-fs/strata/bench/target"
)

// options are the command-line settings.
type options struct {
	cache     string
	scratch   string
	targets   []string
	workloads []string
	reps      int
	out       string
	jsonOut   string
	profile   string
	strata    string
	fuseOvl   string
	uring     string
	list      bool
}

const plainTarget = "plain"

var allTargets = []string{plainTarget, string(target.Overlayfs), string(target.FuseOverlayfs), string(target.Strata)}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "compare: %v\n", err)
		os.Exit(1)
	}
}

func parseOptions(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.StringVar(&o.cache, "cache", "/var/cache/strata-bench", "where the standard data set is built once and kept")
	fs.StringVar(&o.scratch, "scratch", "", "where mounts, upper and work directories go (default CACHE/run); same filesystem as the cache")
	targets := fs.String("targets", strings.Join(allTargets, ","), "comma-separated targets to compare")
	workloads := fs.String("workloads", "", "comma-separated workloads to run (default all; see -list)")
	fs.IntVar(&o.reps, "reps", 3, "repetitions of each workload on each target")
	fs.StringVar(&o.out, "out", "", "also write the markdown report to this file")
	fs.StringVar(&o.jsonOut, "json", "", "also write every sample and failure as JSON to this file")
	fs.StringVar(&o.strata, "strata", "", "strata binary (default: go build ./cmd/strata into the scratch directory)")
	fs.StringVar(&o.fuseOvl, "fuse-overlayfs", "fuse-overlayfs", "fuse-overlayfs binary")
	fs.StringVar(&o.profile, "profile", "", "record each FUSE daemon with perf into this directory (NAME.perf.data and a flat NAME.txt); adds overhead")
	fs.StringVar(&o.uring, "io-uring", "on", "FUSE over io_uring for the run (the fuse module's enable_uring, which only strata asks for): on, off, or as-is")
	fs.BoolVar(&o.list, "list", false, "list the workloads and exit")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.targets = splitList(*targets)
	o.workloads = splitList(*workloads)
	if o.scratch == "" {
		o.scratch = filepath.Join(o.cache, "run")
	}
	if o.reps < 1 {
		return o, fmt.Errorf("-reps %d: need at least 1", o.reps)
	}
	if !contains([]string{"on", "off", "as-is"}, o.uring) {
		return o, fmt.Errorf("-io-uring %q: want on, off or as-is", o.uring)
	}
	for _, t := range o.targets {
		if !contains(allTargets, t) {
			return o, fmt.Errorf("unknown target %q (have %s)", t, strings.Join(allTargets, ", "))
		}
	}
	for _, w := range o.workloads {
		if _, ok := findScenario(w); !ok {
			return o, fmt.Errorf("unknown workload %q (see -list)", w)
		}
	}
	return o, nil
}

func run(args []string) error {
	o, err := parseOptions(args)
	if err != nil {
		return err
	}
	if o.list {
		for _, s := range scenarios {
			fmt.Printf("%-14s %s\n", s.name, s.about)
		}
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it mounts overlayfs and drops the kernel's caches")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	restoreUring, err := setUring(o.uring)
	if err != nil {
		return err
	}
	defer restoreUring()

	r, err := prepare(ctx, o)
	if err != nil {
		return err
	}
	if r.tracer != nil {
		defer func() {
			if err := r.tracer.close(); err != nil {
				logf("%v", err)
			}
		}()
	}
	start := time.Now()
	runErr := r.runAll()
	unmountErr := errors.Join(r.reg.UnmountAll(), unmountLeftovers(o))
	report := r.report(time.Since(start))
	fmt.Print(report)
	return errors.Join(runErr, unmountErr, writeOutputs(o, r.res, report))
}

// prepare clears what an earlier run left, builds the missing parts of the
// data set the selected workloads use, and finds the binaries.
func prepare(ctx context.Context, o options) (*runner, error) {
	if err := unmountLeftovers(o); err != nil {
		return nil, fmt.Errorf("leftovers of an earlier run: %w", err)
	}
	if err := os.RemoveAll(o.scratch); err != nil {
		return nil, fmt.Errorf("clear scratch: %w", err)
	}
	if err := os.MkdirAll(o.scratch, 0o755); err != nil {
		return nil, fmt.Errorf("scratch: %w", err)
	}
	if o.profile != "" {
		if err := os.MkdirAll(o.profile, 0o755); err != nil {
			return nil, fmt.Errorf("profile dir: %w", err)
		}
	}
	data := newDataset(o.cache)
	need := map[stack]bool{}
	for _, sc := range o.selected() {
		need[sc.stack] = true
	}
	if err := data.build(ctx, logf, need); err != nil {
		return nil, err
	}
	r := &runner{ctx: ctx, opts: o, data: data, reg: &target.Registry{}, res: newResults()}
	r.bins = target.Binaries{FuseOverlayfs: o.fuseOvl, Strata: o.strata}
	if contains(o.targets, string(target.Strata)) || contains(o.targets, string(target.FuseOverlayfs)) {
		r.tracer, r.traceErr = newRequestTracer()
		if r.traceErr != nil {
			logf("FUSE requests will not be counted: %v", r.traceErr)
		}
	}
	if contains(o.targets, string(target.Strata)) && r.bins.Strata == "" {
		r.bins.Strata, r.strataErr = buildStrata(o.scratch)
		if r.strataErr != nil {
			logf("strata will not mount: %v", r.strataErr)
		}
	}
	return r, nil
}

// unmountLeftovers takes down mounts under the scratch directory and the
// cache (a data-set build mounts overlayfs there) that a killed run left.
func unmountLeftovers(o options) error {
	return errors.Join(target.UnmountStale(o.scratch), target.UnmountStale(o.cache))
}

// writeOutputs writes the report and the raw samples where asked.
func writeOutputs(o options, res *results, report string) error {
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
		logf("report written to %s", o.out)
	}
	if o.jsonOut != "" {
		if err := res.writeJSON(o.jsonOut); err != nil {
			return err
		}
		logf("samples written to %s", o.jsonOut)
	}
	return nil
}

// buildStrata builds the strata binary of this module into dir.
func buildStrata(dir string) (string, error) {
	bin := filepath.Join(dir, "strata")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/strata-fs/strata/cmd/strata").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/strata: %w: %s", err, lastLines(string(out), 5))
	}
	return bin, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func findScenario(name string) (scenario, bool) {
	for _, s := range scenarios {
		if s.name == name {
			return s, true
		}
	}
	return scenario{}, false
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var items []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	return items
}

// uringParam is the fuse module's switch for FUSE over io_uring. Only
// mounts that ask for it use it: strata does, fuse-overlayfs does not.
const uringParam = "/sys/module/fuse/parameters/enable_uring"

// setUring sets the switch for the run ("as-is" leaves it) and returns
// what puts the old value back.
func setUring(mode string) (restore func(), err error) {
	old, err := os.ReadFile(uringParam)
	if mode == "as-is" {
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("-io-uring %s: %w", mode, err)
	}
	val := map[string]string{"on": "Y", "off": "N"}[mode]
	if err := os.WriteFile(uringParam, []byte(val), 0); err != nil {
		return nil, fmt.Errorf("-io-uring %s: %w", mode, err)
	}
	return func() { os.WriteFile(uringParam, old, 0) }, nil
}

// uringState describes the switch as the run found it.
func uringState() string {
	b, err := os.ReadFile(uringParam)
	if err != nil {
		return "not in this kernel"
	}
	if strings.TrimSpace(string(b)) == "Y" {
		return "on (enable_uring=Y; strata takes requests through per-CPU rings, fuse-overlayfs through /dev/fuse)"
	}
	return "off (enable_uring=N; both FUSE daemons read /dev/fuse)"
}
