package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/strata-fs/strata/bench/target"
)

// runner runs the selected workloads on the selected targets.
type runner struct {
	ctx  context.Context
	opts options
	data dataset
	bins target.Binaries
	// strataErr says why there is no strata binary to mount with.
	strataErr error
	reg       *target.Registry
	res       *results
	// tracer counts FUSE requests in the first repetition (requests.go);
	// nil, with traceErr saying why, where the kernel cannot.
	tracer   *requestTracer
	traceErr error
}

// selected lists the scenarios the options pick, in table order.
func (o options) selected() []scenario {
	var picked []scenario
	for _, sc := range scenarios {
		if len(o.workloads) == 0 || contains(o.workloads, sc.name) {
			picked = append(picked, sc)
		}
	}
	return picked
}

// runAll runs every selected scenario, repetitions outside and targets
// inside, so the targets take turns. A target that fails a scenario is
// skipped for the rest of that scenario; the others go on.
func (r *runner) runAll() error {
	for _, sc := range r.opts.selected() {
		r.res.addScenario(sc)
		for rep := 1; rep <= r.opts.reps; rep++ {
			for _, t := range r.opts.targets {
				if r.res.failed(sc.name, t) {
					continue
				}
				if err := r.ctx.Err(); err != nil {
					return fmt.Errorf("interrupted: %w", err)
				}
				logf("%s on %s, repetition %d/%d", sc.name, t, rep, r.opts.reps)
				if err := r.runOnce(sc, t, rep); err != nil {
					if r.ctx.Err() != nil {
						return fmt.Errorf("interrupted: %w", r.ctx.Err())
					}
					logf("  %s on %s failed: %v", sc.name, t, err)
					r.res.fail(sc.name, t, err)
				}
			}
		}
	}
	return nil
}

// runOnce runs one repetition of sc on target t in a fresh directory that
// is removed afterwards, with the mount (if any) taken down first.
func (r *runner) runOnce(sc scenario, t string, rep int) (err error) {
	dir := filepath.Join(r.opts.scratch, fmt.Sprintf("%s-%s-%d", sc.name, t, rep))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("scratch: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("clean scratch: %w", rerr))
		}
	}()
	v := &view{ctx: r.ctx, data: r.data}
	v.record = func(name string, value float64) { r.res.add(name, t, value) }
	if t == plainTarget {
		v.dir, err = r.plainDir(sc, dir)
		if err != nil {
			return err
		}
		return sc.run(v)
	}
	m, err := r.mount(sc, target.Kind(t), dir)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, m.Unmount()) }()
	v.dir, v.mount = m.Dir, m
	if rep == 1 && r.tracer != nil && m.Kind != target.Overlayfs {
		v.tracer = r.tracer
		v.recordRequests = func(name string, c requestCount) { r.res.addRequests(name, t, c) }
	}
	if r.opts.profile != "" && m.DaemonPID != 0 {
		p, err := startProfile(m.DaemonPID, filepath.Join(r.opts.profile, fmt.Sprintf("%s-%s-%d", sc.name, t, rep)))
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, p.stop()) }()
	}
	return sc.run(v)
}

// lowers is the stack a scenario mounts, topmost first.
func (r *runner) lowers(s stack) []string {
	switch s {
	case deep128:
		return r.data.deepStack(128)
	case deep1000:
		return r.data.deepStack(1000)
	case wideStack:
		return r.data.wideLayers()
	default:
		return r.data.imageLayers()
	}
}

func (r *runner) mount(sc scenario, kind target.Kind, dir string) (*target.Mount, error) {
	if kind == target.Strata && r.strataErr != nil {
		return nil, fmt.Errorf("%w: %w", target.ErrCannotMount, r.strataErr)
	}
	spec := target.Spec{
		Lowers: r.lowers(sc.stack),
		Upper:  filepath.Join(dir, "upper"),
		Work:   filepath.Join(dir, "work"),
		Dir:    filepath.Join(dir, "mnt"),
	}
	for _, d := range []string{spec.Upper, spec.Work, spec.Dir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("mount dirs: %w", err)
		}
	}
	return target.New(kind, spec, r.bins, r.reg)
}

// plainDir is the baseline's directory for sc: the shared read-only tree for
// reading workloads, a scratch directory with copies of the files it needs
// for writing ones.
func (r *runner) plainDir(sc scenario, dir string) (string, error) {
	if !sc.writes {
		switch sc.stack {
		case imageStack:
			return r.data.imageMerged(), nil
		case wideStack:
			return r.data.wideBottom(), nil
		default:
			return r.data.deepBottom(), nil
		}
	}
	plain := filepath.Join(dir, "plain")
	for _, rel := range sc.plainFiles {
		if err := copyFile(filepath.Join(r.data.imageMerged(), rel), filepath.Join(plain, rel)); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(plain, 0o755); err != nil {
		return "", fmt.Errorf("plain dir: %w", err)
	}
	return plain, nil
}

func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}
