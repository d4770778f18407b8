package vmcore

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// Joined is what a VM was last onboarded onto: the Istio revision its files
// point at and the proxy version it was given (the running istiod's).
type Joined struct {
	Revision string `json:"revision"`
	Istio    string `json:"istio"`
}

// Restart is the sidecar's last restart and the WorkloadEntry seen just
// before it: until the entry shows a newer connection and health report, its
// Healthy is the old proxy's.
type Restart struct {
	At                 time.Time `json:"at"`
	EntryConnectedAt   string    `json:"entryConnectedAt,omitempty"`
	EntryProbedAt      time.Time `json:"entryProbedAt,omitzero"`
	EntryBeforeRestart string    `json:"entryBeforeRestart,omitempty"`
}

// Store is what must survive between passes, per VM and for the agents. The
// core reads and writes it only through these methods, so that a store on
// Secrets and a custom resource's status fits in place of the state
// directory. A record never written reads as its zero value with ok false.
type Store interface {
	// AgentTLS is the client side of mTLS to the agent whose certificate
	// names server (its VM's name, or an address): the client certificate
	// and the agent CA it pins.
	AgentTLS(server string) (*tls.Config, error)
	// AgentIdentity is the certificate the VM's agent presents, for its
	// addresses, and the CA it pins its callers to.
	AgentIdentity(vm string, addresses []string) (onboard.AgentIdentity, error)

	// Address is where the VM was last onboarded (its WorkloadEntry is
	// there): recorded once it is in, or, on its first onboarding, with the
	// files delivered for that address.
	Address(vm string) (string, error)
	SetAddress(vm, addr string) error
	// AddressHolder is another VM last onboarded at addr, if any.
	AddressHolder(addr, except string) (string, error)

	Joined(vm string) (Joined, bool, error)
	SetJoined(vm string, j Joined) error

	// Token is the last istio-token issued to the VM (bound to its Secret).
	Token(vm string) ([]byte, error)
	// SetFiles keeps the workload files generated for the VM, the token among them.
	SetFiles(vm string, f workloadfiles.Files) error
	// SetToken keeps a token renewed on its own, the other files as they were.
	SetToken(vm string, tok []byte) error

	LastRestart(vm string) (Restart, bool, error)
	SetLastRestart(vm string, r Restart) error
}

// DirStore is the Store in hostctl's state directory, in the files meshvm
// has always kept there (vms/NAME/address, istio.json, files/).
type DirStore struct {
	Dir *statedir.Dir
	// VMs are the names whose addresses AddressHolder looks through: the
	// config's VMs.
	VMs []string
}

var _ Store = DirStore{}

func vmPath(vm string, elem ...string) string {
	return filepath.Join(append([]string{"vms", vm}, elem...)...)
}

// readOptional reads rel; a file that is not there is no error.
func (s DirStore) readOptional(rel string) ([]byte, bool, error) {
	b, err := s.Dir.ReadFile(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	return b, err == nil, err
}

func (s DirStore) AgentTLS(server string) (*tls.Config, error) {
	return onboard.ClientTLS(s.Dir, server)
}

func (s DirStore) AgentIdentity(vm string, addresses []string) (onboard.AgentIdentity, error) {
	ca, err := s.Dir.AgentCA()
	if err != nil {
		return onboard.AgentIdentity{}, err
	}
	server, _, err := s.Dir.VMCert(ca, vm, addresses)
	if err != nil {
		return onboard.AgentIdentity{}, err
	}
	return onboard.AgentIdentity{Cert: server.Cert, Key: server.Key, ClientCA: ca.CertPEM()}, nil
}

func (s DirStore) Address(vm string) (string, error) {
	b, _, err := s.readOptional(vmPath(vm, "address"))
	return string(b), err
}

func (s DirStore) SetAddress(vm, addr string) error {
	return s.Dir.WriteSecret(vmPath(vm, "address"), []byte(addr))
}

func (s DirStore) AddressHolder(addr, except string) (string, error) {
	for _, vm := range s.VMs {
		if vm == except {
			continue
		}
		got, err := s.Address(vm)
		if err != nil {
			return "", err
		}
		if got == addr {
			return vm, nil
		}
	}
	return "", nil
}

// Joined treats an unreadable record as none, as meshvm always has: the VM
// is then on the default revision, or about to join the site's.
func (s DirStore) Joined(vm string) (Joined, bool, error) {
	var j Joined
	b, ok, err := s.readOptional(vmPath(vm, "istio.json"))
	if err != nil || !ok || json.Unmarshal(b, &j) != nil {
		return Joined{}, false, err
	}
	return j, true, nil
}

func (s DirStore) SetJoined(vm string, j Joined) error {
	return s.writeJSON(vmPath(vm, "istio.json"), j)
}

func (s DirStore) Token(vm string) ([]byte, error) {
	b, _, err := s.readOptional(vmPath(vm, "files", "istio-token"))
	return b, err
}

func (s DirStore) SetFiles(vm string, f workloadfiles.Files) error {
	for name, data := range f.Map() {
		if err := s.Dir.WriteSecret(vmPath(vm, "files", name), data); err != nil {
			return err
		}
	}
	return nil
}

func (s DirStore) SetToken(vm string, tok []byte) error {
	return s.Dir.WriteSecret(vmPath(vm, "files", "istio-token"), tok)
}

func (s DirStore) LastRestart(vm string) (Restart, bool, error) {
	var r Restart
	b, ok, err := s.readOptional(vmPath(vm, "restart.json"))
	if err != nil || !ok {
		return r, false, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return Restart{}, false, err
	}
	return r, true, nil
}

func (s DirStore) SetLastRestart(vm string, r Restart) error {
	return s.writeJSON(vmPath(vm, "restart.json"), r)
}

func (s DirStore) writeJSON(rel string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.Dir.WriteSecret(rel, b)
}
