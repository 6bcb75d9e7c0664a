package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/strata-fs/strata/bench/target"
)

// results collects the samples of a run.
type results struct {
	scenarios []scenario
	samples   map[string]map[string][]float64    // metric -> target -> samples
	failures  map[string]map[string]error        // scenario -> target -> first error
	requests  map[string]map[string]requestCount // metric -> FUSE target -> requests in repetition 1
}

func newResults() *results {
	return &results{samples: map[string]map[string][]float64{}, failures: map[string]map[string]error{},
		requests: map[string]map[string]requestCount{}}
}

func (r *results) addRequests(metricName, targetName string, c requestCount) {
	if r.requests[metricName] == nil {
		r.requests[metricName] = map[string]requestCount{}
	}
	r.requests[metricName][targetName] = c
}

func (r *results) addScenario(sc scenario) { r.scenarios = append(r.scenarios, sc) }

func (r *results) add(metricName, targetName string, v float64) {
	if r.samples[metricName] == nil {
		r.samples[metricName] = map[string][]float64{}
	}
	r.samples[metricName][targetName] = append(r.samples[metricName][targetName], v)
}

func (r *results) fail(scenarioName, targetName string, err error) {
	if r.failures[scenarioName] == nil {
		r.failures[scenarioName] = map[string]error{}
	}
	r.failures[scenarioName][targetName] = err
}

func (r *results) failed(scenarioName, targetName string) bool {
	return r.failures[scenarioName][targetName] != nil
}

// writeJSON writes every sample (in seconds or bytes) and every failure.
func (r *results) writeJSON(path string) error {
	failures := map[string]map[string]string{}
	for sc, byTarget := range r.failures {
		failures[sc] = map[string]string{}
		for t, err := range byTarget {
			failures[sc][t] = err.Error()
		}
	}
	b, err := json.MarshalIndent(struct {
		Samples  map[string]map[string][]float64    `json:"samples"`
		Failures map[string]map[string]string       `json:"failures"`
		Requests map[string]map[string]requestCount `json:"fuse_requests_first_repetition"`
	}{r.samples, failures, r.requests}, "", "  ")
	if err != nil {
		return fmt.Errorf("samples as JSON: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("samples as JSON: %w", err)
	}
	return nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// footnotes numbers distinct failure messages.
type footnotes struct {
	texts []string
	index map[string]int
}

func (f *footnotes) ref(text string) int {
	if f.index == nil {
		f.index = map[string]int{}
	}
	if i, ok := f.index[text]; ok {
		return i
	}
	f.texts = append(f.texts, text)
	f.index[text] = len(f.texts)
	return len(f.texts)
}

// report renders the results as markdown: a header naming the machine and
// the run, then one row per metric with each target's median and the
// ratios, then the footnotes explaining every failure.
func (r *runner) report(took time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## strata side-by-side comparison\n\n")
	fmt.Fprintf(&b, "- date: %s; run took %v\n", time.Now().Format("2006-01-02 15:04 MST"), took.Round(time.Second))
	fmt.Fprintf(&b, "- machine: %d CPUs, kernel %s, %s\n", runtime.NumCPU(), kernelRelease(), fsDescription(r.opts.cache))
	fmt.Fprintf(&b, "- data set: %s\n", r.data.describe())
	fmt.Fprintf(&b, "- FUSE over io_uring: %s\n", uringState())
	fmt.Fprintf(&b, "- median of %d repetitions per cell, targets interleaved; cold = fresh mount + dropped caches, warm = the same step again\n", r.opts.reps)
	if r.opts.profile != "" {
		fmt.Fprintf(&b, "- FUSE daemons were profiled with perf (profiles in %s): their times carry its overhead\n", r.opts.profile)
	}
	fmt.Fprintf(&b, "- command: `go run ./bench/compare %s`\n\n", strings.Join(os.Args[1:], " "))

	targets := r.opts.targets
	var ratios [][2]string // numerator, denominator
	for _, t := range targets {
		if t != plainTarget && contains(targets, plainTarget) {
			ratios = append(ratios, [2]string{t, plainTarget})
		}
	}
	if contains(targets, string(target.Strata)) {
		for _, t := range targets {
			if t != plainTarget && t != string(target.Strata) {
				ratios = append(ratios, [2]string{string(target.Strata), t})
			}
		}
	}
	header := append([]string{"workload"}, targets...)
	for _, q := range ratios {
		header = append(header, q[0]+" ÷ "+q[1])
	}
	fmt.Fprintf(&b, "| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat("---|", len(header)))

	var notes footnotes
	for _, sc := range r.res.scenarios {
		for _, m := range sc.metrics {
			row := []string{m.name}
			for _, t := range targets {
				row = append(row, r.cell(sc, m, t, &notes))
			}
			for _, q := range ratios {
				row = append(row, r.ratio(m, q[0], q[1]))
			}
			fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
		}
	}
	if len(notes.texts) > 0 {
		b.WriteString("\n")
		for i, t := range notes.texts {
			fmt.Fprintf(&b, "[%d] %s\n\n", i+1, t)
		}
	}
	r.requestTable(&b)
	return b.String()
}

// cell is one target's median for a metric, or why there is none.
func (r *runner) cell(sc scenario, m metric, t string, notes *footnotes) string {
	xs := r.res.samples[m.name][t]
	err := r.res.failures[sc.name][t]
	if len(xs) == 0 {
		if err == nil {
			return "n/a"
		}
		word := "failed"
		if errors.Is(err, target.ErrCannotMount) {
			word = "cannot mount"
		}
		return fmt.Sprintf("%s [%d]", word, notes.ref(fmt.Sprintf("%s, %s: %v", t, sc.name, err)))
	}
	s := formatValue(median(xs), m.unit)
	if len(xs) < r.opts.reps {
		s += fmt.Sprintf(" (n=%d)", len(xs))
	}
	if err != nil {
		s += fmt.Sprintf(" [%d]", notes.ref(fmt.Sprintf("%s, %s: %v", t, sc.name, err)))
	}
	return s
}

func (r *runner) ratio(m metric, num, den string) string {
	a, b := r.res.samples[m.name][num], r.res.samples[m.name][den]
	if len(a) == 0 || len(b) == 0 || median(b) == 0 {
		return "–"
	}
	return formatRatio(median(a) / median(b))
}

// formatRatio shows two significant digits where a ratio is far from 1.
func formatRatio(q float64) string {
	switch {
	case q < 0.1:
		return fmt.Sprintf("%.3fx", q)
	case q >= 100:
		return fmt.Sprintf("%.0fx", q)
	default:
		return fmt.Sprintf("%.2fx", q)
	}
}

func formatValue(v float64, u unit) string {
	switch u {
	case bytesUsed:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case perCall:
		return fmt.Sprintf("%.2f µs", v*1e6)
	default:
		if v < 1 {
			return fmt.Sprintf("%.1f ms", v*1000)
		}
		return fmt.Sprintf("%.2f s", v)
	}
}

func kernelRelease() string {
	out, err := exec.Command("uname", "-r").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// fsDescription names the filesystem and device the data set lives on.
func fsDescription(dir string) string {
	out, err := exec.Command("findmnt", "-no", "FSTYPE,SOURCE", "--target", dir).Output()
	if err != nil {
		return "filesystem unknown"
	}
	return "data on " + strings.Join(strings.Fields(string(out)), " ")
}

// describe summarises the data set from the facts its build wrote down.
func (d dataset) describe() string {
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(d.imageDir, name))
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%d-layer image of %s entries (opaque dir %s, %s whiteouts, %s overwrites) with two 1 GiB files; %d- and %d-layer stacks over a bottom layer of %d files; a 2-layer tree of 1,000,000 entries (walk1m)",
		imageLayerCount, read("entries"), read("opaque-dir"), read("whiteouts"), read("overwrites"), 128, deepLayers, deepBottomFiles)
}
