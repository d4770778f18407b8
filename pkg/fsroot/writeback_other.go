//go:build !linux

package fsroot

import "os"

// startWriteBack does nothing where there is no sync_file_range (macOS):
// it is only a throughput hint for large files, and WriteFile's fsync before
// the rename still makes every write durable.
func startWriteBack(f *os.File, off, n int64) {}
