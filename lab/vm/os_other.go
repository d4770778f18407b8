//go:build !linux

package vm

import (
	"context"
	"errors"
	"log/slog"
)

// errNotLinux is what asking for the lab anywhere but Linux gets: it names
// the sites that do work there.
var errNotLinux = errors.New("the lab runs on Linux only (it boots systemd-nspawn VMs in network namespaces): " +
	"on macOS use machines: multipass (or ssh machines with cluster.provider kubeconfig)")

// Unsupported says why the lab cannot run on this machine's OS.
func Unsupported() error { return errNotLinux }

// The overlay mounts of rootfs.go are Linux's; elsewhere nothing is mounted.
func mountRoot(context.Context, *slog.Logger, Spec) error { return errNotLinux }
func unmountRoot(string) error                            { return nil }
