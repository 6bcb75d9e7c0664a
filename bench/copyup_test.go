package bench

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-fs/strata/bench/fixture"
	"github.com/strata-fs/strata/bench/target"
)

// The copy-up layer set: one lower layer under an empty one, holding a file
// of each size.
var copyupSet struct {
	once
	layers []string // topmost first
}

type copyupFile struct {
	name     string // sub-benchmark name and file name
	size     int64
	data     int64 // bytes of data; less than size for a sparse file
	metadata bool  // chmod instead of a data write
}

var copyupFiles = []copyupFile{
	{name: "4KiB", size: 4 << 10, data: 4 << 10},
	{name: "1MiB", size: 1 << 20, data: 1 << 20},
	{name: "256MiB", size: 256 << 20, data: 256 << 20},
	{name: "sparse-1GiB-1MiB-data", size: 1 << 30, data: 1 << 20},
	{name: "chmod-256MiB-metadata-only", size: 256 << 20, data: 256 << 20, metadata: true},
}

func copyupLayers(b *testing.B) {
	copyupSet.do(b, func() error {
		root := filepath.Join(setup.root, "copyup")
		lower := fixture.Layer{Root: filepath.Join(root, "lower")}
		empty := fixture.Layer{Root: filepath.Join(root, "empty")}
		if err := empty.MkdirAll("."); err != nil {
			return err
		}
		for i, f := range copyupFiles {
			if err := lower.WriteSparseFile(f.name, f.size, f.data, uint64(100+i)); err != nil {
				return err
			}
		}
		copyupSet.layers = []string{empty.Root, lower.Root}
		return nil
	})
}

// BenchmarkCopyUp changes a lower file on a fresh mount: appending one byte
// copies the data up (4 KiB, 1 MiB, 256 MiB, and a sparse 1 GiB file with
// 1 MiB of data), chmod needs only the metadata. upper-MiB/op is the disk
// space the file then takes in the upper layer.
func BenchmarkCopyUp(b *testing.B) {
	forEachTarget(b, func(b *testing.B, kind target.Kind) {
		copyupLayers(b)
		for _, f := range copyupFiles {
			b.Run(f.name, func(b *testing.B) { benchmarkCopyUp(b, kind, f) })
		}
	})
}

func benchmarkCopyUp(b *testing.B, kind target.Kind, f copyupFile) {
	b.ReportAllocs()
	if !f.metadata {
		b.SetBytes(f.data)
	}
	var (
		cpu       cpuMeter
		allocated int64
	)
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		m := mountFresh(b, kind, copyupSet.layers, "")
		path := filepath.Join(m.Dir, f.name)
		cpu.begin(m)
		b.StartTimer()
		var err error
		if f.metadata {
			err = os.Chmod(path, 0o600)
		} else {
			err = appendOneByte(path)
		}
		b.StopTimer()
		cpu.end()
		if err != nil {
			b.Fatal(err)
		}
		allocated += upperAllocation(b, m, f.name)
		if err := m.Unmount(); err != nil {
			b.Fatal(err)
		}
	}
	cpu.report(b)
	b.ReportMetric(float64(allocated)/float64(b.N)/(1<<20), "upper-MiB/op")
}

func appendOneByte(path string) error {
	file, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := file.Write([]byte{'\n'}); err != nil {
		file.Close()
		return err
	}
	return file.Close()
}

// upperAllocation is the disk space name takes in the mount's upper layer
// (0 if it is not there).
func upperAllocation(b *testing.B, m *target.Mount, name string) int64 {
	upper := filepath.Join(filepath.Dir(m.Dir), "upper")
	st, err := os.Lstat(filepath.Join(upper, name))
	if err != nil {
		return 0
	}
	return statBlocks(st) * 512
}
