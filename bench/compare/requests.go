package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/strata-fs/strata/bench/target"
	"golang.org/x/sys/unix"
)

// FUSE request counts.
//
// A FUSE target's time on a metadata workload is mostly round trips to its
// daemon, so the run counts them rather than guessing: in the first
// repetition, every timed step on a FUSE mount runs with the kernel's
// fuse:fuse_request_send tracepoint on, filtered to that mount's
// connection, in a trace instance of the bench's own (traceInstance), so
// the system's main trace buffer and other tracefs users are left alone.
// The count is every request the kernel queued for the daemon, RELEASE
// included; FORGETs travel apart and are not traced. The tracepoint costs
// well under a microsecond a request, beside round trips of ten or more,
// and only in one repetition of each.
//
// Kernels without the tracepoint (recent ones have it; 6.18 does) or without tracefs
// simply get no request table.

// traceInstance is the bench's own tracefs instance, made for the run and
// removed after it.
const traceInstance = "/sys/kernel/tracing/instances/strata-bench"

// traceBufferKB is the instance's buffer per CPU: room for about 800,000
// requests on each, more than any workload here makes.
const traceBufferKB = 32 << 10

// requestCount is what one timed step asked of a daemon.
type requestCount struct {
	Total  int            `json:"total"`
	ByKind map[string]int `json:"by_kind"` // FUSE_LOOKUP -> count; may cover fewer than Total if the buffer overflowed
}

// requestTracer counts a FUSE connection's requests through tracefs.
type requestTracer struct {
	event string // the tracepoint's directory in the instance
}

// newRequestTracer makes the trace instance, or says why it cannot.
func newRequestTracer() (*requestTracer, error) {
	if _, err := os.Stat(filepath.Dir(traceInstance)); err != nil {
		return nil, fmt.Errorf("tracefs: %w", err)
	}
	// An instance a killed run left behind still counts for its old
	// filter; start afresh.
	if err := os.Remove(traceInstance); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("stale trace instance: %w", err)
	}
	if err := os.Mkdir(traceInstance, 0o755); err != nil {
		return nil, fmt.Errorf("trace instance: %w", err)
	}
	t := &requestTracer{event: filepath.Join(traceInstance, "events/fuse/fuse_request_send")}
	if _, err := os.Stat(t.event); err != nil {
		t.close()
		return nil, fmt.Errorf("no fuse_request_send tracepoint in this kernel: %w", err)
	}
	if err := writeTraceFile(filepath.Join(traceInstance, "buffer_size_kb"), strconv.Itoa(traceBufferKB)); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// close removes the trace instance, which also turns its event off.
func (t *requestTracer) close() error {
	if err := os.Remove(traceInstance); err != nil {
		return fmt.Errorf("remove trace instance: %w", err)
	}
	return nil
}

// count runs step with the requests to the FUSE mount at dir traced. The
// step runs whatever happens to the tracing: stepErr is its own error,
// traceErr says why its requests could not be counted.
func (t *requestTracer) count(dir string, step func() error) (c requestCount, stepErr, traceErr error) {
	if traceErr = t.start(dir); traceErr != nil {
		return requestCount{}, step(), traceErr
	}
	stepErr = step()
	if err := writeTraceFile(filepath.Join(t.event, "enable"), "0"); err != nil {
		return requestCount{}, stepErr, err
	}
	c, traceErr = readRequestCount(filepath.Join(traceInstance, "trace"))
	return c, stepErr, traceErr
}

// start empties the trace and turns the tracepoint on for the FUSE
// connection mounted at dir only.
func (t *requestTracer) start(dir string) error {
	conn, err := fuseConnection(dir)
	if err != nil {
		return err
	}
	if err := writeTraceFile(filepath.Join(t.event, "filter"), fmt.Sprintf("connection == %d", conn)); err != nil {
		return err
	}
	// Opening the trace for writing with O_TRUNC empties its buffers.
	if err := writeTraceFile(filepath.Join(traceInstance, "trace"), ""); err != nil {
		return err
	}
	return writeTraceFile(filepath.Join(t.event, "enable"), "1")
}

// fuseConnection is the number the kernel gives the FUSE connection
// mounted at dir: its superblock's device number as the kernel keeps it
// (major << 20 | minor), which is what the tracepoint prints.
func fuseConnection(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("fuse connection of %s: %w", dir, err)
	}
	return uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev)), nil
}

var (
	traceWrittenRE = regexp.MustCompile(`entries-written: (\d+)/(\d+)`)
	traceOpcodeRE  = regexp.MustCompile(`opcode \d+ \((\w+)\)`)
)

// readRequestCount tallies the instance's trace. The header's
// "entries-written" is the true total even when the buffer overflowed
// and lost the oldest lines.
func readRequestCount(path string) (requestCount, error) {
	f, err := os.Open(path)
	if err != nil {
		return requestCount{}, fmt.Errorf("read trace: %w", err)
	}
	defer f.Close()
	c := requestCount{ByKind: map[string]int{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	written := -1
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			if m := traceWrittenRE.FindStringSubmatch(line); m != nil {
				written, _ = strconv.Atoi(m[2])
			}
			continue
		}
		if m := traceOpcodeRE.FindStringSubmatch(line); m != nil {
			c.ByKind[m[1]]++
			c.Total++
		}
	}
	if err := sc.Err(); err != nil {
		return requestCount{}, fmt.Errorf("read trace: %w", err)
	}
	c.Total = max(c.Total, written)
	return c, nil
}

// writeTraceFile writes one tracefs control file.
func writeTraceFile(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0); err != nil {
		return fmt.Errorf("tracefs %s: %w", path, err)
	}
	return nil
}

// topKinds names the commonest request kinds of c, most first, without
// the FUSE_ prefix: "GETXATTR 49,867, GETATTR 10,572".
func (c requestCount) topKinds(n int) string {
	kinds := make([]string, 0, len(c.ByKind))
	for k := range c.ByKind {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool {
		if c.ByKind[kinds[i]] != c.ByKind[kinds[j]] {
			return c.ByKind[kinds[i]] > c.ByKind[kinds[j]]
		}
		return kinds[i] < kinds[j]
	})
	var parts []string
	for i, k := range kinds {
		if i == n {
			parts = append(parts, "…")
			break
		}
		parts = append(parts, strings.TrimPrefix(k, "FUSE_")+" "+groupThousands(c.ByKind[k]))
	}
	return strings.Join(parts, ", ")
}

// groupThousands writes n with commas: 49867 -> "49,867".
func groupThousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// requestTable renders the request counts of the run: per timed step, how
// many requests each FUSE daemon got and of what kind, and, when the
// roundtrip workload ran, what strata's requests cost at its measured
// round trip, against the whole time of the plain directory and of
// kernel overlayfs, which make none.
func (r *runner) requestTable(b *strings.Builder) {
	if r.tracer == nil {
		if r.traceErr != nil {
			fmt.Fprintf(b, "\nFUSE requests were not counted: %v\n", r.traceErr)
		}
		return
	}
	var fuseTargets []string
	for _, t := range r.opts.targets {
		if t == string(target.Strata) || t == string(target.FuseOverlayfs) {
			fuseTargets = append(fuseTargets, t)
		}
	}
	strata := string(target.Strata)
	roundTrip := r.strataRoundTrip()
	header := []string{"workload"}
	for _, t := range fuseTargets {
		header = append(header, t+" requests")
		if t == strata {
			header = append(header, "strata's by kind")
		}
	}
	if roundTrip > 0 {
		header = append(header, "strata's requests × its round trip", "that ÷ plain", "that ÷ overlayfs")
	}
	fmt.Fprintf(b, "\n### FUSE requests per step (repetition 1)\n\n")
	fmt.Fprintf(b, "Requests the kernel sent each FUSE daemon during the timed step, counted with the fuse_request_send tracepoint (FORGETs travel apart and are not counted).")
	if roundTrip > 0 {
		fmt.Fprintf(b, " The last columns price strata's requests at its round trip, %s: the getxattr row above, strata's time per call less the plain directory's (the call itself, answered in the kernel). That is the time those round trips alone take, shown as a share of the plain directory's and kernel overlayfs's whole time, which make none; a GETXATTR answered from the daemon's cache is nearly the cheapest request there is, so this is a lower bound.", formatValue(roundTrip, perCall))
	}
	fmt.Fprintf(b, "\n\n| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat("---|", len(header)))
	for _, sc := range r.res.scenarios {
		for _, m := range sc.metrics {
			counts := r.res.requests[m.name]
			if len(counts) == 0 || m.name == roundTripMetric {
				continue
			}
			row := []string{m.name}
			for _, t := range fuseTargets {
				c, ok := counts[t]
				cell, kinds := "–", "–"
				if ok {
					cell = groupThousands(c.Total)
				}
				if c.Total > 0 {
					kinds = c.topKinds(4)
				}
				row = append(row, cell)
				if t == strata {
					row = append(row, kinds)
				}
			}
			if roundTrip > 0 {
				row = append(row, r.roundTripShare(m, counts[strata], roundTrip)...)
			}
			fmt.Fprintf(b, "| %s |\n", strings.Join(row, " | "))
		}
	}
}

// strataRoundTrip is strata's round trip as the roundtrip workload
// measured it: its median time per getxattr less the plain directory's,
// or 0 if either is missing.
func (r *runner) strataRoundTrip() float64 {
	viaFUSE := r.res.samples[roundTripMetric][string(target.Strata)]
	inKernel := r.res.samples[roundTripMetric][plainTarget]
	if len(viaFUSE) == 0 || len(inKernel) == 0 {
		return 0
	}
	return max(0, median(viaFUSE)-median(inKernel))
}

// roundTripShare prices c at roundTrip: the time, and that time against
// the plain directory's and overlayfs's medians of m.
func (r *runner) roundTripShare(m metric, c requestCount, roundTrip float64) []string {
	if c.Total == 0 {
		return []string{"–", "–", "–"}
	}
	cost := float64(c.Total) * roundTrip
	cells := []string{formatValue(cost, seconds)}
	for _, base := range []string{plainTarget, string(target.Overlayfs)} {
		xs := r.res.samples[m.name][base]
		if len(xs) == 0 || median(xs) == 0 {
			cells = append(cells, "–")
			continue
		}
		cells = append(cells, formatRatio(cost/median(xs)))
	}
	return cells
}
