// Package bench measures strata: Go benchmarks of its hot paths through a
// real mount (this package's _test.go files) and, in bench/compare, the
// side-by-side comparison with kernel overlayfs and fuse-overlayfs.
//
// The benchmarks build the strata binary, write their layers into a
// temporary directory and mount them with "strata mount". They need root.
// Nothing heavy happens in a plain "go test": the binary and the layers are
// built only when -bench is given, and each layer set only when a benchmark
// that needs it runs.
//
//	go test -bench . ./bench/...                  # strata only
//	STRATA_BENCH_TARGETS=strata,overlayfs,fuse-overlayfs go test -bench . ./bench/
//
// Besides ns/op, benchmarks that mount a FUSE daemon report daemon-cpu-ns/op
// (the CPU time of the daemon's threads per operation, from
// /proc/PID/task/*/schedstat), lookups report ns/lookup, and copy-up benchmarks report upper-MiB/op, the disk space the copy took in
// the upper layer (small for a metadata-only copy-up or a sparse file whose
// holes were kept).
//
// Subpackages: fixture writes layers (files, whiteouts, opaque directories,
// deep stacks); target mounts them with each implementation; compare is the
// side-by-side comparison program.
package bench
