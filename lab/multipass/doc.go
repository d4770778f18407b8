// Package multipass is a stand-in for the multipass CLI, backed by the
// lab's systemd-nspawn VMs (lab/labmachine), for tests that drive
// pkg/machine/multipass unchanged. It reproduces what canonical/multipass v1.16
// does at that boundary, read from its source: the instance states and
// their transitions (Starting until cloud-init has finished, Suspended,
// Deleted until purged), the JSON of info and list, exec as the ubuntu
// user with the remote exit status and stderr, transfer of files and stdin
// as SFTP writes them, and the client's error texts and exit codes. Each VM
// boots Debian's cloud-init with Multipass's base cloud-init config from a
// NoCloud seed, so /etc/hosts is rewritten on every boot as on a real
// instance. It does not stand in for mounts, snapshots, networks,
// --cloud-init, or the resource limits (--cpus, --memory and --disk are
// checked and recorded; lab VMs share the host). Linux only.
package multipass

// DirEnv names the stand-in's state directory: its "daemon". When it is
// unset or missing, every command fails as the real client does when
// multipassd is not running.
const DirEnv = "MULTIPASS_STANDIN_DIR"
