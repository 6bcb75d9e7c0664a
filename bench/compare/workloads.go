package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/strata-fs/strata/bench/fixture"
	"github.com/strata-fs/strata/bench/target"
	"golang.org/x/sys/unix"
)

// unit says how a metric's samples are shown.
type unit int

const (
	seconds unit = iota
	bytesUsed
	perCall // seconds per call, shown in µs
)

// metric is one row of the results table.
type metric struct {
	name string
	unit unit
}

// stack names the layers a scenario mounts.
type stack int

const (
	imageStack stack = iota
	deep128
	deep1000
	wideStack // 1,000,000 entries
)

// scenario is one workload: what it mounts, what the plain-directory
// baseline gets, and the timed steps it runs on a fresh mount. Each step
// records one sample of one of its metrics.
type scenario struct {
	name    string
	about   string
	stack   stack
	metrics []metric
	// writes says the workload changes the tree: the plain baseline then
	// gets a fresh scratch directory holding copies of plainFiles (paths
	// relative to the image root) instead of the shared read-only tree.
	writes     bool
	plainFiles []string
	run        func(v *view) error
}

// view is where one repetition of a scenario works.
type view struct {
	ctx   context.Context
	dir   string        // mount root, or the plain directory
	mount *target.Mount // nil for the plain directory
	data  dataset
	// record stores a sample for the current target and repetition.
	record func(metricName string, value float64)
	// tracer, if set, counts the FUSE requests of each timed step and
	// hands them to recordRequests (requests.go).
	tracer         *requestTracer
	recordRequests func(metricName string, c requestCount)
}

// timed runs step and records its wall-clock time under metricName.
func (v *view) timed(metricName string, step func() error) error {
	return v.timedCalls(metricName, 1, step)
}

// timedCalls runs step, which makes calls calls of one kind, and records
// its wall-clock time per call under metricName.
func (v *view) timedCalls(metricName string, calls int, step func() error) error {
	if err := v.ctx.Err(); err != nil {
		return err
	}
	var took time.Duration
	timedStep := func() error {
		start := time.Now()
		if err := step(); err != nil {
			return err
		}
		took = time.Since(start)
		return nil
	}
	if v.tracer == nil {
		if err := timedStep(); err != nil {
			return fmt.Errorf("%s: %w", metricName, err)
		}
	} else {
		c, stepErr, traceErr := v.tracer.count(v.dir, timedStep)
		if stepErr != nil {
			return fmt.Errorf("%s: %w", metricName, stepErr)
		}
		if traceErr != nil {
			logf("  %s: requests not counted: %v", metricName, traceErr)
		} else {
			v.recordRequests(metricName, c)
		}
	}
	v.record(metricName, took.Seconds()/float64(calls))
	return nil
}

func (v *view) path(rel string) string { return filepath.Join(v.dir, rel) }

// cold empties the kernel's caches before the first timed step.
func (v *view) cold() error { return target.DropCaches() }

// tool runs a program with stdout going to /dev/null; okCodes lists exit
// codes besides 0 that mean success (grep's 1: no match).
func (v *view) tool(okCodes []int, name string, args ...string) error {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	defer devnull.Close()
	cmd := exec.CommandContext(v.ctx, name, args...)
	cmd.Stdout = devnull
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		for _, c := range okCodes {
			if exit.ExitCode() == c {
				return nil
			}
		}
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLines(stderr.String(), 3))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// statCount is how many names each stat step looks up.
const statCount = 10_000

// roundTripCalls is how many getxattr calls the roundtrip workload times.
const roundTripCalls = 20_000

// roundTripMetric is the roundtrip workload's row; the request table
// prices each workload's requests at strata's median of it.
const roundTripMetric = "getxattr(security.selinux) of a file without xattrs, per call"

// scenarios is every workload, in table order.
var scenarios = []scenario{
	{
		name: "find", about: "find over the 5-layer image, cold then warm",
		metrics: []metric{{"find, cold", seconds}, {"find, warm", seconds}},
		run: func(v *view) error {
			if err := v.cold(); err != nil {
				return err
			}
			for _, m := range []string{"find, cold", "find, warm"} {
				if err := v.timed(m, func() error { return v.tool(nil, "find", v.dir) }); err != nil {
					return err
				}
			}
			return nil
		},
	},
	{
		name: "ls", about: "ls -lR over the 5-layer image, cold then warm; then the daemon's peak RSS",
		metrics: []metric{{"ls -lR, cold", seconds}, {"ls -lR, warm", seconds}, {"daemon peak RSS after ls -lR", bytesUsed}},
		run: func(v *view) error {
			if err := v.cold(); err != nil {
				return err
			}
			for _, m := range []string{"ls -lR, cold", "ls -lR, warm"} {
				if err := v.timed(m, func() error { return v.tool(nil, "ls", "-lR", v.dir) }); err != nil {
					return err
				}
			}
			if v.mount == nil || v.mount.Kind == target.Overlayfs {
				return nil // no daemon
			}
			rss, err := v.mount.PeakRSS()
			if err != nil {
				return err
			}
			v.record("daemon peak RSS after ls -lR", float64(rss))
			return nil
		},
	},
	deepStatScenario("stat128", deep128, 128),
	deepStatScenario("stat1000", deep1000, 1000),
	{
		name: "walk1m", stack: wideStack,
		about: "find over a 1,000,000-entry tree (cold); the daemon's peak RSS, and its RSS once the kernel forgot the inodes",
		metrics: []metric{{"find 1M entries, cold", seconds}, {"daemon peak RSS walking 1M entries", bytesUsed},
			{"daemon RSS after drop_caches (inodes forgotten)", bytesUsed}},
		run: func(v *view) error {
			if err := v.cold(); err != nil {
				return err
			}
			if err := v.timed("find 1M entries, cold", func() error { return v.tool(nil, "find", v.dir) }); err != nil {
				return err
			}
			if v.mount == nil || v.mount.Kind == target.Overlayfs {
				return nil // no daemon
			}
			return recordForgetMemory(v)
		},
	},
	{
		name: "cat", about: "cat of a 1 GiB lower file, cold then warm",
		metrics: []metric{{"cat 1 GiB, cold", seconds}, {"cat 1 GiB, warm", seconds}},
		run: func(v *view) error {
			if err := v.cold(); err != nil {
				return err
			}
			for _, m := range []string{"cat 1 GiB, cold", "cat 1 GiB, warm"} {
				if err := v.timed(m, func() error { return v.tool(nil, "cat", v.path(bigFileA)) }); err != nil {
					return err
				}
			}
			return nil
		},
	},
	{
		name: "append", about: "append 1 byte to a 1 GiB lower file, fsync, sync (cold)",
		metrics: []metric{{"append 1 B to 1 GiB lower file + fsync", seconds}},
		writes:  true, plainFiles: []string{bigFileA},
		run: func(v *view) error {
			if err := v.cold(); err != nil {
				return err
			}
			return v.timed("append 1 B to 1 GiB lower file + fsync", func() error { return appendByte(v.path(bigFileA)) })
		},
	},
	{
		name: "chmod", about: "chmod of a 1 GiB lower file (cold)",
		metrics: []metric{{"chmod 1 GiB lower file", seconds}},
		writes:  true, plainFiles: []string{bigFileB},
		run: func(v *view) error {
			if err := v.cold(); err != nil {
				return err
			}
			return v.timed("chmod 1 GiB lower file", func() error {
				if err := os.Chmod(v.path(bigFileB), 0o600); err != nil {
					return fmt.Errorf("chmod: %w", err)
				}
				return nil
			})
		},
	},
	{
		name: "untar-small", about: "untar 10,000 4 KiB files into the mount, then rm -rf them",
		metrics: []metric{{"untar 10k x 4 KiB", seconds}, {"rm -rf 10k files", seconds}},
		writes:  true,
		run: func(v *view) error {
			dest := v.path("untar-small")
			if err := os.Mkdir(dest, 0o755); err != nil {
				return fmt.Errorf("untar dir: %w", err)
			}
			if err := v.cold(); err != nil {
				return err
			}
			if err := v.timed("untar 10k x 4 KiB", func() error { return v.tool(nil, "tar", "-xf", v.data.smallTar, "-C", dest) }); err != nil {
				return err
			}
			return v.timed("rm -rf 10k files", func() error { return v.tool(nil, "rm", "-rf", filepath.Join(dest, "small")) })
		},
	},
	{
		name: "untar-include", about: "untar /usr/include into the mount, then grep -r over it",
		metrics: []metric{{"untar /usr/include", seconds}, {"grep -r /usr/include", seconds}},
		writes:  true,
		run: func(v *view) error {
			dest := v.path("untar-include")
			if err := os.Mkdir(dest, 0o755); err != nil {
				return fmt.Errorf("untar dir: %w", err)
			}
			if err := v.cold(); err != nil {
				return err
			}
			if err := v.timed("untar /usr/include", func() error { return v.tool(nil, "tar", "-xf", v.data.includeTar, "-C", dest) }); err != nil {
				return err
			}
			return v.timed("grep -r /usr/include", func() error {
				return v.tool([]int{1}, "grep", "-r", "strata_pattern_that_matches_nothing", dest)
			})
		},
	},
	{
		name: "fio", about: "fio 4 KiB random read/write (256 MiB of I/O) on a 1 GiB file, after its copy-up",
		metrics: []metric{{"fio 4 KiB randrw, 256 MiB on 1 GiB file", seconds}},
		writes:  true, plainFiles: []string{bigFileB},
		run: func(v *view) error {
			file := v.path(bigFileB)
			if err := forceCopyUp(file); err != nil {
				return err
			}
			return v.timed("fio 4 KiB randrw, 256 MiB on 1 GiB file", func() error {
				return v.tool(nil, "fio", "--name=randrw", "--filename="+file, "--rw=randrw", "--bs=4k",
					"--size=1g", "--io_size=256m", "--ioengine=psync", "--invalidate=0",
					"--randrepeat=1", "--norandommap", "--output-format=terse")
			})
		},
	},
	{
		// ls -l asks every file for its security.selinux label, and FUSE
		// caches no xattr answers, so each call is one request to a FUSE
		// daemon, and nearly the cheapest one to answer: this row is
		// what a round trip costs on the machine. Kernel overlayfs and
		// the plain directory answer in the kernel.
		name: "roundtrip", about: "20,000 getxattr(security.selinux) calls on a lower file without xattrs: a FUSE daemon's round trip",
		metrics: []metric{{roundTripMetric, perCall}},
		run: func(v *view) error {
			file := v.path(bigFileA)
			// The first call looks the file up; the rest are the
			// getxattr alone.
			if err := absentLabel(file); err != nil {
				return err
			}
			return v.timedCalls(roundTripMetric, roundTripCalls, func() error {
				for range roundTripCalls {
					if err := absentLabel(file); err != nil {
						return err
					}
				}
				return nil
			})
		},
	},
}

// absentLabel asks file for its SELinux label, as ls -l does, and checks
// the answer is ENODATA (the file has none, and the layers' filesystem
// supports security xattrs).
func absentLabel(file string) error {
	var buf [256]byte
	_, err := unix.Lgetxattr(file, "security.selinux", buf[:])
	if err != unix.ENODATA {
		return fmt.Errorf("getxattr security.selinux of %s: %v, want ENODATA", file, err)
	}
	return nil
}

// deepStatScenario looks up 10,000 missing names and 10,000 names of the
// bottom layer through a deep stack, each first on a cold mount and then
// again.
func deepStatScenario(name string, s stack, depth int) scenario {
	miss1 := fmt.Sprintf("%d layers: 10k stat missing, first", depth)
	miss2 := fmt.Sprintf("%d layers: 10k stat missing, repeated", depth)
	bot1 := fmt.Sprintf("%d layers: 10k stat bottom file, first", depth)
	bot2 := fmt.Sprintf("%d layers: 10k stat bottom file, repeated", depth)
	return scenario{
		name: name, stack: s,
		about:   fmt.Sprintf("10,000 stat calls of missing and of bottom-layer names through %d layers", depth),
		metrics: []metric{{miss1, seconds}, {miss2, seconds}, {bot1, seconds}, {bot2, seconds}},
		run: func(v *view) error {
			if err := v.cold(); err != nil {
				return err
			}
			steps := []struct {
				metric string
				name   func(int) string
				want   error
			}{
				{miss1, fixture.MissingName, unix.ENOENT},
				{miss2, fixture.MissingName, unix.ENOENT},
				{bot1, bottomNameSpread, nil},
				{bot2, bottomNameSpread, nil},
			}
			for _, st := range steps {
				if err := v.timed(st.metric, func() error { return statNames(v.ctx, v.dir, st.name, st.want) }); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// forgetSettle is how long a daemon gets to process the kernel's FORGETs
// and give the memory back before its RSS is read.
const forgetSettle = 3 * time.Second

// recordForgetMemory records the daemon's peak RSS, then makes the kernel
// forget every inode (drop_caches) and records the RSS left.
func recordForgetMemory(v *view) error {
	peak, err := v.mount.PeakRSS()
	if err != nil {
		return err
	}
	v.record("daemon peak RSS walking 1M entries", float64(peak))
	if err := target.DropCaches(); err != nil {
		return err
	}
	select {
	case <-time.After(forgetSettle):
	case <-v.ctx.Done():
		return v.ctx.Err()
	}
	rss, err := v.mount.RSS()
	if err != nil {
		return err
	}
	v.record("daemon RSS after drop_caches (inodes forgotten)", float64(rss))
	return nil
}

// bottomNameSpread picks statCount names spread over the whole bottom
// layer.
func bottomNameSpread(i int) string {
	return fixture.BottomName(i * (deepBottomFiles / statCount))
}

// statNames lstats statCount names and checks each gives the wanted
// result (nil or an errno).
func statNames(ctx context.Context, root string, name func(int) string, want error) error {
	var st unix.Stat_t
	for i := range statCount {
		if i%1000 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		p := filepath.Join(root, name(i))
		err := unix.Lstat(p, &st)
		if !errors.Is(err, want) && !(err == nil && want == nil) {
			return fmt.Errorf("lstat %s: got %v, want %v", p, err, want)
		}
	}
	return nil
}

// appendByte appends one byte to path and makes it durable: fsync of the
// file, then sync of everything (a FUSE daemon may keep data elsewhere).
func appendByte(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("append: %w", err)
	}
	if _, err := f.Write([]byte{'\n'}); err != nil {
		f.Close()
		return fmt.Errorf("append: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("append: fsync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("append: %w", err)
	}
	unix.Sync()
	return nil
}

// forceCopyUp makes a union filesystem copy a lower file's data up, without
// changing it, by writing its first byte back in place.
func forceCopyUp(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("copy-up: %w", err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 0); err != nil {
		f.Close()
		return fmt.Errorf("copy-up: %w", err)
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		f.Close()
		return fmt.Errorf("copy-up: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("copy-up: %w", err)
	}
	return nil
}
