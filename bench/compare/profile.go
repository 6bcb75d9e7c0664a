package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// profiler samples a FUSE daemon's stacks with perf(1) while a workload
// runs, for the "where does strata's time go" part of the results.
type profiler struct {
	cmd  *exec.Cmd
	data string
}

// startProfile starts "perf record" on pid, writing to base+".perf.data".
func startProfile(pid int, base string) (*profiler, error) {
	data := base + ".perf.data"
	cmd := exec.Command("perf", "record", "--quiet", "-F", "999", "-g", "-p", strconv.Itoa(pid), "-o", data)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf record: %w", err)
	}
	time.Sleep(300 * time.Millisecond) // let perf attach before the workload starts
	return &profiler{cmd: cmd, data: data}, nil
}

// stop ends the recording and writes beside it (base+".txt") the symbols
// with their inclusive share of the samples ("children": a function with
// everything it called), which shows where the time goes through go-fuse and
// the kernel; "perf report -i" on the data digs further.
func (p *profiler) stop() error {
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		return fmt.Errorf("stop perf: %w", err)
	}
	err := p.cmd.Wait()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return fmt.Errorf("perf record: %w", err)
	}
	out, err := exec.Command("perf", "report", "--stdio", "--children", "--sort", "symbol",
		"--percent-limit", "2", "-g", "none", "-i", p.data).Output()
	if err != nil {
		return fmt.Errorf("perf report %s: %w", p.data, err)
	}
	txt := p.data[:len(p.data)-len(".perf.data")] + ".txt"
	if err := os.WriteFile(txt, out, 0o644); err != nil {
		return fmt.Errorf("profile summary: %w", err)
	}
	return nil
}
