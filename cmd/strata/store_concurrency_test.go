package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// TestConcurrentCommands runs four imports, listings, inspections and a
// diff at the same time against one store while a container of it stays
// mounted (and is written through) the whole time. None may fail, and
// none may meet badger's directory lock; afterwards the store lists every
// image and the container, and the mount still serves.
func TestConcurrentCommands(t *testing.T) {
	c := newCLI(t)
	c.imageWithContainer("conc/base", "busy")
	mnt := c.mount("busy")

	sources := map[string]string{}
	for i := range 4 {
		sources[fmt.Sprintf("conc/img%d:v%d", i, i)] = rootfs(t, fmt.Sprintf("img%d", i))
	}
	var cmds [][]string
	for name, src := range sources {
		cmds = append(cmds, []string{"import", "--quiet", src, "--name", name})
	}
	for range 3 {
		cmds = append(cmds,
			[]string{"images"}, []string{"images", "-a", "--format", "json"}, []string{"ps", "-a"},
			[]string{"df"}, []string{"inspect", "busy"}, []string{"history", "conc/base"},
			[]string{"diff", "busy"})
	}
	results := runAll(c, cmds, func() error { return writeThrough(mnt, 20) })
	for _, r := range results {
		if r.err != nil || strings.Contains(strings.ToLower(r.stderr), "lock") {
			t.Errorf("concurrent command failed or met a lock:\n%v", r)
		}
	}

	checkImages(t, c, append(mapKeys(sources), "conc/base:latest"))
	checkMountedContainer(t, c, "busy")
	checkWrittenFiles(t, mnt, 20)
}

// runAll runs every command and the side work at once and returns the
// commands' results; the side work's error becomes a failed result.
func runAll(c *cli, cmds [][]string, side func() error) []result {
	results := make([]result, len(cmds)+1)
	var wg sync.WaitGroup
	for i, args := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.run(args...)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		results[len(cmds)] = result{args: []string{"(writes through the mount)"}, err: side()}
	}()
	wg.Wait()
	return results
}

// writeThrough writes n files into the mounted container, as a process in
// it would while the store is busy.
func writeThrough(mnt string, n int) error {
	dir := filepath.Join(mnt, "work")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mkdir through mount: %w", err)
	}
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("f%d", i))
		if err := os.WriteFile(p, []byte(strings.Repeat("w", i*100)), 0o644); err != nil {
			return fmt.Errorf("write through mount: %w", err)
		}
	}
	return nil
}

func checkWrittenFiles(t *testing.T, mnt string, n int) {
	t.Helper()
	for i := range n {
		b, err := os.ReadFile(filepath.Join(mnt, "work", fmt.Sprintf("f%d", i)))
		if err != nil || len(b) != i*100 {
			t.Errorf("file %d written through the mount: %d bytes, %v", i, len(b), err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "etc", "motd")); err != nil || string(b) != "hello from busy\n" {
		t.Errorf("image file through the mount: %q, %v", b, err)
	}
}

// checkImages checks that "strata images" lists exactly the given names.
func checkImages(t *testing.T, c *cli, want []string) {
	t.Helper()
	var rows []imageRow
	c.jsonOut(&rows, "images")
	var got []string
	for _, r := range rows {
		got = append(got, r.Repository+":"+r.Tag)
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("strata images lists %v; want %v", got, want)
	}
}

// checkMountedContainer checks that "strata ps" lists the container as
// mounted (and as the only one).
func checkMountedContainer(t *testing.T, c *cli, name string) {
	t.Helper()
	var rows []psRow
	c.jsonOut(&rows, "ps")
	if len(rows) != 1 || rows[0].Name != name || !rows[0].Mounted {
		t.Errorf("strata ps lists %+v; want %s, mounted", rows, name)
	}
}

func mapKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
