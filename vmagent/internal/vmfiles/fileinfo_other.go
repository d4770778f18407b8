//go:build !linux

package vmfiles

import "syscall"

// changeTime is the inode's change time (macOS names it Ctimespec).
func changeTime(st *syscall.Stat_t) int64 { return st.Ctimespec.Nano() }
