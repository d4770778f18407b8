//go:build !linux

package instance

import "errors"

var errNotLinux = errors.New("the lab runs on Linux only: its istiod address lives on Linux's loopback")

// AddIstiodIP fails: the lab is Linux's.
func (i Instance) AddIstiodIP() error { return errNotLinux }

// RemoveIstiodIP has nothing to remove off Linux.
func (i Instance) RemoveIstiodIP() error { return nil }
