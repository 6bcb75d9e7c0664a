package bench

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/strata-fs/strata/bench/fixture"
	"github.com/strata-fs/strata/bench/target"
)

// smallFileSize is the size of each read and write round trip.
const smallFileSize = 4 << 10

var fileopsSet struct {
	once
	layers []string // topmost first
}

func fileopsLayers(b *testing.B) {
	fileopsSet.do(b, func() error {
		root := filepath.Join(setup.root, "fileops")
		lower := fixture.Layer{Root: filepath.Join(root, "lower")}
		top := fixture.Layer{Root: filepath.Join(root, "top")}
		if err := lower.WriteFile("small", fixture.RandomBytes(smallFileSize, 3), 0o644); err != nil {
			return err
		}
		if err := top.MkdirAll("new"); err != nil {
			return err
		}
		fileopsSet.layers = []string{top.Root, lower.Root}
		return nil
	})
}

// BenchmarkOpenReadClose opens a 4 KiB lower file, reads it whole and
// closes it, on one mount.
func BenchmarkOpenReadClose(b *testing.B) {
	forEachTarget(b, func(b *testing.B, kind target.Kind) {
		fileopsLayers(b)
		m := mountFresh(b, kind, fileopsSet.layers, "")
		path := filepath.Join(m.Dir, "small")
		buf := make([]byte, smallFileSize)
		if _, err := os.ReadFile(path); err != nil { // the lookup is not what is measured
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.SetBytes(smallFileSize)
		var cpu cpuMeter
		cpu.begin(m)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(f, buf); err != nil {
				b.Fatal(err)
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		cpu.end()
		cpu.report(b)
	})
}

// BenchmarkCreateWriteClose creates a new file, writes 4 KiB and closes it,
// on one mount.
func BenchmarkCreateWriteClose(b *testing.B) {
	forEachTarget(b, func(b *testing.B, kind target.Kind) {
		fileopsLayers(b)
		m := mountFresh(b, kind, fileopsSet.layers, "")
		data := fixture.RandomBytes(smallFileSize, 4)
		if err := os.WriteFile(filepath.Join(m.Dir, "new", "warm-up"), data, 0o644); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.SetBytes(smallFileSize)
		var cpu cpuMeter
		cpu.begin(m)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			f, err := os.OpenFile(filepath.Join(m.Dir, "new", fmt.Sprintf("f%d", i)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.Write(data); err != nil {
				b.Fatal(err)
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		cpu.end()
		cpu.report(b)
	})
}

// statBlocks is the number of 512-byte blocks a file occupies.
func statBlocks(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks
	}
	return 0
}
