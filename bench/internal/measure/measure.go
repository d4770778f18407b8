// Package measure holds what the benchmarks measure with: medians and
// incompressible payloads.
package measure

import (
	"crypto/rand"
	"io"
	"os"
	"slices"
	"time"
)

// Median is the middle of ds: one slow round does not decide a figure.
func Median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// RandomFile writes size random bytes to path, synced: the incompressible
// payload.
func RandomFile(path string, size int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, int64(size)); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
