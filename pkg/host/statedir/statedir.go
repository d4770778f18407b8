// Package statedir is hostctl's state directory (.meshvm beside the
// config): the agent CA that every vmagent pins, hostctl's client
// certificate, each VM's server certificate and generated workload files.
// Secrets are 0600 in 0700 directories; every write is atomic.
package statedir

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/pkg/host/filelock"
	"github.com/meshvm/meshvm/pkg/mtls"
)

// Validity of the certificates hostctl issues. The CA outlives the VMs'
// certificates, which `hostctl vm onboard` renews when they near expiry.
const (
	caValidity     = 10 * 365 * 24 * time.Hour
	leafValidity   = 365 * 24 * time.Hour
	renewBefore    = 30 * 24 * time.Hour
	clientIdentity = "hostctl"
)

// Dir is an opened state directory.
type Dir struct {
	path string
	root *fsroot.Root
}

// Open creates the directory (0700) if needed.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := os.Chmod(path, 0o700); err != nil {
		return nil, err
	}
	root, err := fsroot.New(path)
	if err != nil {
		return nil, err
	}
	return &Dir{path: path, root: root}, nil
}

// Path joins elements below the directory.
func (d *Dir) Path(elem ...string) string { return filepath.Join(append([]string{d.path}, elem...)...) }

// WriteSecret writes data atomically with mode 0600, creating parents 0700.
func (d *Dir) WriteSecret(rel string, data []byte) error {
	dir := fsroot.DirOptions{Mode: 0o700, UID: os.Getuid(), GID: os.Getgid()}
	return d.root.WriteBytes("/"+filepath.ToSlash(rel), data, fsroot.WriteOptions{Mode: 0o600, UID: os.Getuid(), GID: os.Getgid(), Dir: &dir})
}

// ReadFile reads a file below the directory.
func (d *Dir) ReadFile(rel string) ([]byte, error) {
	return d.root.ReadFile("/" + filepath.ToSlash(rel))
}

// locked runs fn holding the directory's lock: VMs onboard concurrently, and
// two of them creating the CA (or one certificate) at once would each pin a
// different one. flock serializes goroutines and hostctl processes alike.
func (d *Dir) locked(fn func() error) error {
	return filelock.Locked(d.Path(".lock"), 0o600, fn)
}

// AgentCA loads the agent CA, creating it on first use.
func (d *Dir) AgentCA() (ca *mtls.CA, err error) {
	err = d.locked(func() error {
		ca, err = d.agentCA()
		return err
	})
	return ca, err
}

func (d *Dir) agentCA() (*mtls.CA, error) {
	cert, errC := d.ReadFile("agent-ca/ca.pem")
	key, errK := d.ReadFile("agent-ca/ca-key.pem")
	if errC == nil && errK == nil {
		ca, err := mtls.LoadCA(cert, key)
		if err != nil {
			return nil, fmt.Errorf("agent CA in %s: %w: restore it from a backup, or delete agent-ca/ and re-onboard every VM", d.Path("agent-ca"), err)
		}
		return ca, nil
	}
	if !errors.Is(errC, fs.ErrNotExist) && errC != nil {
		return nil, errC
	}
	ca, err := mtls.NewCA("meshvm agent CA", caValidity)
	if err != nil {
		return nil, err
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	// The key first: a CA certificate without its key would be unusable.
	if err := d.WriteSecret("agent-ca/ca-key.pem", keyPEM); err != nil {
		return nil, err
	}
	if err := d.WriteSecret("agent-ca/ca.pem", ca.CertPEM()); err != nil {
		return nil, err
	}
	return ca, nil
}

// TakeCA makes cert and key this directory's agent CA when it has none
// (a second workstation taking the one the agents pin), saying whether it
// did; one already here is kept.
func (d *Dir) TakeCA(cert, key []byte) (taken bool, err error) {
	if _, err := mtls.LoadCA(cert, key); err != nil {
		return false, fmt.Errorf("agent CA: %w", err)
	}
	err = d.locked(func() error {
		if _, err := d.ReadFile("agent-ca/ca.pem"); !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		// The key first: a CA certificate without its key would be unusable.
		if err := d.WriteSecret("agent-ca/ca-key.pem", key); err != nil {
			return err
		}
		taken = true
		return d.WriteSecret("agent-ca/ca.pem", cert)
	})
	return taken, err
}

// Pair is a certificate and its key, PEM.
type Pair struct{ Cert, Key []byte }

// ClientCert returns hostctl's client certificate, issuing or renewing it.
func (d *Dir) ClientCert(ca *mtls.CA) (Pair, error) {
	return d.leaf(ca, "agent-ca/hostctl", func() ([]byte, []byte, error) {
		p, err := IssueClient(ca, clientIdentity)
		return p.Cert, p.Key, err
	}, nil)
}

// VMCert returns the server certificate of a VM's agent for its addresses,
// issuing a new one when there is none, it nears expiry, another CA signed
// it, or the VM's addresses changed. changed says whether it was (re)issued.
func (d *Dir) VMCert(ca *mtls.CA, vm string, addresses []string) (p Pair, changed bool, err error) {
	issue, fits := VMLeaf(ca, vm, addresses)
	issued := false
	p, err = d.leaf(ca, filepath.Join("vms", vm, "agent"), func() ([]byte, []byte, error) {
		issued = true
		return issue()
	}, fits)
	return p, issued, err
}

// VMLeaf is how the server certificate of VM vm's agent is issued for its
// addresses, and whether one fits them: every store of agent identities
// (this directory, the cluster's Secrets) issues it the same way.
func VMLeaf(ca *mtls.CA, vm string, addresses []string) (issue func() ([]byte, []byte, error), fits func(*x509.Certificate) bool) {
	var ips []net.IP
	var names = []string{vm}
	for _, a := range addresses {
		if ip := net.ParseIP(a); ip != nil {
			ips = append(ips, ip)
		} else {
			names = append(names, a)
		}
	}
	return func() ([]byte, []byte, error) {
			return ca.IssueServer(vm, names, ips, leafValidity)
		}, func(c *x509.Certificate) bool {
			return slices.EqualFunc(sortedIPs(c.IPAddresses), sortedIPs(ips), net.IP.Equal)
		}
}

// IssueClient issues a client identity that agents pinning ca accept.
func IssueClient(ca *mtls.CA, name string) (Pair, error) {
	cert, key, err := ca.IssueClient(name, leafValidity)
	return Pair{Cert: cert, Key: key}, err
}

// leaf reuses the pair at base(.pem, -key.pem) while it is valid, signed by
// ca, and fits; otherwise it issues a new one.
func (d *Dir) leaf(ca *mtls.CA, base string, issue func() ([]byte, []byte, error), fits func(*x509.Certificate) bool) (p Pair, err error) {
	err = d.locked(func() error {
		p, err = d.leafLocked(ca, base, issue, fits)
		return err
	})
	return p, err
}

func (d *Dir) leafLocked(ca *mtls.CA, base string, issue func() ([]byte, []byte, error), fits func(*x509.Certificate) bool) (Pair, error) {
	cert, errC := d.ReadFile(base + ".pem")
	key, errK := d.ReadFile(base + "-key.pem")
	if errC == nil && errK == nil && Usable(ca, cert, fits) {
		return Pair{Cert: cert, Key: key}, nil
	}
	cert, key, err := issue()
	if err != nil {
		return Pair{}, err
	}
	if err := d.WriteSecret(base+"-key.pem", key); err != nil {
		return Pair{}, err
	}
	if err := d.WriteSecret(base+".pem", cert); err != nil {
		return Pair{}, err
	}
	return Pair{Cert: cert, Key: key}, nil
}

// Usable says whether certPEM can be kept: signed by ca, not near its end,
// and fits (when set).
func Usable(ca *mtls.CA, certPEM []byte, fits func(*x509.Certificate) bool) bool {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return false
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil || time.Until(c.NotAfter) < renewBefore {
		return false
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return false
	}
	return fits == nil || fits(c)
}

func sortedIPs(ips []net.IP) []net.IP {
	out := slices.Clone(ips)
	slices.SortFunc(out, func(a, b net.IP) int { return bytes.Compare(a.To16(), b.To16()) })
	return out
}
