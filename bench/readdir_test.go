package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/bench/fixture"
	"github.com/strata-fs/strata/bench/target"
)

// The merged directory: 5 layers, readdirDir holding readdirEntries names
// in the union. The base layer adds 6,000 names, each later layer 1,500 new
// ones and overwrites 250 of the base layer's; layers 2 to 4 white out 2,000
// of the base layer's names between them.
const (
	readdirDir     = "big"
	readdirEntries = 10_000
)

var readdirSet struct {
	once
	layers []string // topmost first
}

func readdirLayers(b *testing.B) {
	readdirSet.do(b, func() error {
		root := filepath.Join(setup.root, "readdir")
		layers := make([]fixture.Layer, 5)
		for i := range layers {
			layers[i] = fixture.Layer{Root: filepath.Join(root, fmt.Sprint(i))}
			readdirSet.layers = append([]string{layers[i].Root}, readdirSet.layers...)
		}
		name := func(i int) string { return fmt.Sprintf("%s/n%05d", readdirDir, i) }
		for i := range 6000 {
			if err := layers[0].WriteFile(name(i), []byte("base\n"), 0o644); err != nil {
				return err
			}
		}
		for l := 1; l < 5; l++ {
			for i := range 1500 {
				if err := layers[l].WriteFile(name(6000+(l-1)*1500+i), []byte("new\n"), 0o644); err != nil {
					return err
				}
			}
			for i := range 250 {
				if err := layers[l].WriteFile(name((l-1)*250+i), []byte("overwritten\n"), 0o644); err != nil {
					return err
				}
			}
		}
		for i := range 2000 {
			if err := layers[2+i%3].Whiteout(name(1000 + i)); err != nil {
				return err
			}
		}
		return nil
	})
}

// BenchmarkReaddirMerged lists a 10,000-entry directory merged from 5
// layers with whiteouts: "first" on a fresh mount each time, "repeat" again
// on one mount; "-lstat" variants also lstat every entry, as ls -l does.
func BenchmarkReaddirMerged(b *testing.B) {
	forEachTarget(b, func(b *testing.B, kind target.Kind) {
		readdirLayers(b)
		for _, fresh := range []bool{true, false} {
			for _, stat := range []bool{false, true} {
				name := map[bool]string{true: "first", false: "repeat"}[fresh]
				if stat {
					name += "-lstat"
				}
				b.Run(name, func(b *testing.B) { benchmarkReaddir(b, kind, fresh, stat) })
			}
		}
	})
}

func benchmarkReaddir(b *testing.B, kind target.Kind, freshMount, lstatEach bool) {
	b.ReportAllocs()
	var (
		m   *target.Mount
		cpu cpuMeter
	)
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		if m == nil || freshMount {
			if m != nil {
				if err := m.Unmount(); err != nil {
					b.Fatal(err)
				}
			}
			m = mountFresh(b, kind, readdirSet.layers, "")
			if !freshMount {
				listDir(b, filepath.Join(m.Dir, readdirDir), lstatEach) // warm up
			}
		}
		cpu.begin(m)
		b.StartTimer()
		listDir(b, filepath.Join(m.Dir, readdirDir), lstatEach)
		b.StopTimer()
		cpu.end()
	}
	cpu.report(b)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/readdirEntries, "ns/entry")
}

func listDir(b *testing.B, dir string, lstatEach bool) {
	f, err := os.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	if len(names) != readdirEntries {
		b.Fatalf("%s lists %d names, want %d", dir, len(names), readdirEntries)
	}
	if !lstatEach {
		return
	}
	var st unix.Stat_t
	for _, n := range names {
		if err := unix.Lstat(filepath.Join(dir, n), &st); err != nil {
			b.Fatal(err)
		}
	}
}
