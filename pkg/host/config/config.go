// Package config is hostctl's configuration, meshvm.yaml: every field
// defaults to the value of the hand-run recipe it replaces, a file overrides
// the defaults, MESHVM_* environment variables override the file, and flags
// override those. Merged and validated in one place.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/pkg/machine/multipass"
	"github.com/meshvm/meshvm/pkg/reason"
)

// DefaultFile is looked up in the working directory when --config is not given.
const DefaultFile = "meshvm.yaml"

// Config is version 1 of meshvm.yaml. Its JSON fields have no omitempty:
// hostctl config show prints every one, zero values included, as
// containerd config default does (vm add and vm rm edit the file itself,
// never write this struct).
type Config struct {
	Version int `json:"version"`
	// StateDir holds kubeconfig, agent CA, per-VM certificates, workload files
	// and cached sidecar binaries; relative to the config file's directory.
	StateDir string  `json:"stateDir"`
	Istio    Istio   `json:"istio"`
	Cluster  Cluster `json:"cluster"`
	// Machines is where the VMs come from: lab, multipass or ssh. Empty
	// follows cluster.provider (kubeconfig: ssh when every VM has an
	// address, else multipass).
	Machines Provider `json:"machines"`
	Workload Workload `json:"workload"`
	VMs      []VM     `json:"vms"`
	Agent    Agent    `json:"agent"`
	// Parallel is how many VMs a command works on at once (up, down, vm
	// onboard, status and the others that go over every VM); the rest wait
	// for a turn.
	Parallel int   `json:"parallel"`
	Fleet    Fleet `json:"fleet"`
}

// Fleet is fleet mode: the VMs declared in the cluster as MeshVMs and kept
// in the mesh by a controller, hostctl its client.
type Fleet struct {
	// Enabled turns fleet mode on. Unset, it is on where the cluster is
	// meshvm's own (the lab, the recipe's k3s) and off on a cluster of
	// yours (kubeconfig), where running a controller is the owner's call;
	// Load sets it, so config show says which.
	Enabled *bool `json:"enabled"`
}

// FleetMode says whether fleet mode is on.
func (c Config) FleetMode() bool { return c.Fleet.Enabled != nil && *c.Fleet.Enabled }

// fleetDefault is fleet.enabled when the config leaves it out: on where
// the cluster is meshvm's and every VM is one the controller keeps (a
// proxyless VM is not, yet).
func (c Config) fleetDefault() bool {
	if c.Cluster.Provider == Kubeconfig {
		return false
	}
	for _, vm := range c.VMs {
		if c.Proxyless(vm) {
			return false
		}
	}
	return true
}

// Agent is the vmagent hostctl installs on the VMs.
type Agent struct {
	// Dir holds vmagent-linux-amd64 and vmagent-linux-arm64 to install
	// instead of the ones built into hostctl (development); relative to the
	// config file's directory.
	Dir string `json:"dir"`
}

// Istio is what the mesh is installed with.
type Istio struct {
	// Version empty means the version whose charts hostctl embeds.
	Version string `json:"version"`
	// Hub is the registry path of Istio's images (the cluster's and the VMs'
	// proxyv2); empty means docker.io/istio.
	Hub string `json:"hub"`
	// SidecarDeb is a local istio-sidecar .deb to take the VMs' sidecar from
	// instead of the proxyv2 image (one architecture only); relative to the
	// config file's directory.
	SidecarDeb string `json:"sidecarDeb"`
	// Install says whether up installs Istio: auto (the default) installs
	// it where there is none and joins the VMs to an Istio of yours where
	// there is one; always installs and refuses a cluster with another;
	// never only joins one that is there.
	Install IstioInstall `json:"install"`
	// IstiodAddress is where VMs reach istiod's 15012 directly, in a
	// single-network mesh of yours without an east-west gateway (then
	// workload.network is the mesh's network).
	IstiodAddress string `json:"istiodAddress"`
	// Revision is the Istio revision (istio.io/rev) the VMs join: their
	// files point at istiod-<revision>. Empty is the default revision.
	// meshvm installs that revision's control plane when it installs Istio;
	// hostctl vm upgrade moves VMs between revisions.
	Revision    string `json:"revision"`
	MeshID      string `json:"meshID"`
	ClusterName string `json:"clusterName"`
	Network     string `json:"network"`
}

// IstioInstall is istio.install.
type IstioInstall string

const (
	InstallAuto   IstioInstall = "auto"
	InstallAlways IstioInstall = "always"
	InstallNever  IstioInstall = "never"
)

// Provider names where machines come from.
type Provider string

const (
	Multipass  Provider = "multipass"
	SSH        Provider = "ssh"
	Lab        Provider = "lab"
	Kubeconfig Provider = "kubeconfig"
)

// Cluster is the Kubernetes cluster the mesh runs in.
type Cluster struct {
	Provider Provider `json:"provider"`
	// Kubeconfig of an existing cluster (provider kubeconfig).
	Kubeconfig string `json:"kubeconfig"`
	K3sVersion string `json:"k3sVersion"`
	Servers    int    `json:"servers"`
	Agents     int    `json:"agents"`
	Machine    Size   `json:"machine"`
	// Nodes are the machines k3s goes on with provider ssh: the first is
	// the server, the others agents (servers and agents are then ignored).
	Nodes []Node `json:"nodes"`
}

// Node is a cluster machine reached over SSH.
type Node struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	User    string `json:"user"`
	Key     string `json:"key"`
}

// Size is a machine's size.
type Size struct {
	CPUs   int    `json:"cpus"`
	Memory string `json:"memory"`
	Disk   string `json:"disk"`
}

// Workload is the VM workload's identity in the mesh.
type Workload struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	// Group names the WorkloadGroup and the Service that selects the VMs.
	Group    string `json:"group"`
	Port     int    `json:"port"`
	PortName string `json:"portName"`
	Network  string `json:"network"`
	Probe    Probe  `json:"probe"`
	// TokenLifetime of the istio-token (TokenRequest expirationSeconds),
	// bound to the VM's Secret meshvm-<vm>: a VM off for less than this
	// rejoins on its own; hostctl vm revoke ends it early.
	TokenLifetime Duration `json:"tokenLifetime"`
	// CertificateLifetime of the workload certificate pilot-agent asks
	// istiod for (SECRET_TTL); empty leaves Istio's default, 24h.
	CertificateLifetime Duration `json:"certificateLifetime"`
	// App gives every VM the recipe's app: a systemd unit (meshvm-app)
	// serving HTTP on port, with python3 -m http.server (busybox httpd
	// where the VM has no python3). false when the VMs run their own app on
	// port: up then waits for each VM's registration, not for Healthy.
	// vms[].app overrides it for one VM.
	App bool `json:"app"`
	// Sidecar is how the VMs join the mesh: envoy (pilot-agent and Envoy,
	// the VM's traffic captured, as the recipe has it) or proxyless
	// (pilot-agent alone, for gRPC apps that take their routes, endpoints,
	// certificates and policies over xDS from it; nothing is captured).
	// vms[].sidecar overrides it for one VM.
	Sidecar SidecarMode `json:"sidecar"`
}

// SidecarMode is workload.sidecar.
type SidecarMode string

const (
	SidecarEnvoy     SidecarMode = "envoy"
	SidecarProxyless SidecarMode = "proxyless"
)

// Probe is the WorkloadGroup's HTTP readiness probe.
type Probe struct {
	Path                string `json:"path"`
	Port                int    `json:"port"`
	PeriodSeconds       int    `json:"periodSeconds"`
	InitialDelaySeconds int    `json:"initialDelaySeconds"`
}

// VM is one machine to onboard.
type VM struct {
	Name string `json:"name"`
	// Image is the Multipass image (e.g. "22.04").
	Image string `json:"image"`
	Size  `json:",inline"`
	// Address, User and Key are for provider ssh.
	Address string `json:"address"`
	User    string `json:"user"`
	Key     string `json:"key"`
	// App overrides workload.app for this VM (false: it runs its own app).
	App *bool `json:"app"`
	// Sidecar overrides workload.sidecar for this VM.
	Sidecar SidecarMode `json:"sidecar"`
}

// Duration is a time.Duration written as "1h" in YAML.
type Duration struct{ time.Duration }

func (d Duration) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(d.String())), nil }

func (d *Duration) UnmarshalJSON(b []byte) error {
	s, err := strconv.Unquote(string(b))
	if err != nil {
		return fmt.Errorf("duration %s: want a quoted value such as \"1h\"", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	d.Duration = v
	return nil
}

// Default returns the recipe's values.
func Default() Config {
	return Config{
		Version:  1,
		StateDir: ".meshvm",
		Istio:    Istio{Install: InstallAuto, MeshID: "mesh1", ClusterName: "test", Network: "kube-network"},
		Cluster: Cluster{
			Provider: Multipass, K3sVersion: "v1.33.3+k3s1", Servers: 1, Agents: 2,
			Machine: Size{CPUs: 2, Memory: "2G", Disk: "10G"},
		},
		Workload: Workload{
			Namespace: "vmns", ServiceAccount: "vmsa", Group: "external-app",
			Port: 8000, PortName: "http", Network: "vm-network",
			Probe:         Probe{Path: "/", Port: 8000, PeriodSeconds: 5, InitialDelaySeconds: 1},
			TokenLifetime: Duration{30 * 24 * time.Hour},
			App:           true,
			Sidecar:       SidecarEnvoy,
		},
		VMs:      []VM{{Name: "vm1", Image: multipass.DefaultImage, Size: Size{CPUs: 2, Memory: "1G", Disk: "4G"}}},
		Parallel: DefaultParallel,
	}
}

// DefaultParallel is parallel's default: onboarding moves sidecar binaries
// of some 100 MB to each VM, and eight at once keep a workstation's uplink
// and disk busy without a hundred VMs' transfers and watches at once.
const DefaultParallel = 8

// envOverrides maps MESHVM_* variables to fields.
var envOverrides = []struct {
	name string
	set  func(*Config, string) error
}{
	{"MESHVM_ISTIO_VERSION", func(c *Config, v string) error { c.Istio.Version = v; return nil }},
	{"MESHVM_ISTIO_HUB", func(c *Config, v string) error { c.Istio.Hub = v; return nil }},
	{"MESHVM_SIDECAR_DEB", func(c *Config, v string) error { c.Istio.SidecarDeb = v; return nil }},
	{"MESHVM_MACHINES", func(c *Config, v string) error { c.Machines = Provider(v); return nil }},
	{"MESHVM_MESH_ID", func(c *Config, v string) error { c.Istio.MeshID = v; return nil }},
	{"MESHVM_CLUSTER_NAME", func(c *Config, v string) error { c.Istio.ClusterName = v; return nil }},
	{"MESHVM_CLUSTER_NETWORK", func(c *Config, v string) error { c.Istio.Network = v; return nil }},
	{"MESHVM_PROVIDER", func(c *Config, v string) error { c.Cluster.Provider = Provider(v); return nil }},
	{"MESHVM_KUBECONFIG", func(c *Config, v string) error { c.Cluster.Kubeconfig = v; return nil }},
	{"MESHVM_VM_NAMESPACE", func(c *Config, v string) error { c.Workload.Namespace = v; return nil }},
	{"MESHVM_SERVICE_ACCOUNT", func(c *Config, v string) error { c.Workload.ServiceAccount = v; return nil }},
	{"MESHVM_APP", func(c *Config, v string) error { c.Workload.Group = v; return nil }},
	{"MESHVM_APP_PORT", func(c *Config, v string) error {
		// The probe follows the port it probed, unless it was set apart.
		old := c.Workload.Port
		if err := atoi(v, &c.Workload.Port); err != nil {
			return err
		}
		if c.Workload.Probe.Port == old {
			c.Workload.Probe.Port = c.Workload.Port
		}
		return nil
	}},
	{"MESHVM_VM_NETWORK", func(c *Config, v string) error { c.Workload.Network = v; return nil }},
	{"MESHVM_STATE_DIR", func(c *Config, v string) error { c.StateDir = v; return nil }},
	{"MESHVM_AGENT_DIR", func(c *Config, v string) error { c.Agent.Dir = v; return nil }},
	{"MESHVM_PARALLEL", func(c *Config, v string) error { return atoi(v, &c.Parallel) }},
	{"MESHVM_FLEET", func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q: want true or false (fleet mode on or off)", v)
		}
		c.Fleet.Enabled = &b
		return nil
	}},
}

func atoi(s string, dst *int) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("%q is not a whole number", s)
	}
	*dst = n
	return nil
}

// Load reads path (optional when not explicit) over the defaults, applies
// the environment from getenv, and validates. The state directory is made
// absolute relative to the file's directory.
func Load(path string, explicit bool, getenv func(string) string) (Config, error) {
	c := Default()
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !explicit:
	case err != nil:
		return Config{}, fmt.Errorf("read config: %w", err)
	default:
		// The default VM list is replaced, not merged, by a file that lists VMs.
		c.VMs = nil
		if err := yaml.UnmarshalStrict(data, &c); err != nil {
			return Config{}, reason.Wrap(fmt.Errorf("config %s: %w", path, err), reason.ConfigField)
		}
		if c.VMs == nil {
			c.VMs = Default().VMs
		}
	}
	for _, o := range envOverrides {
		if v := getenv(o.name); v != "" {
			if err := o.set(&c, v); err != nil {
				return Config{}, fmt.Errorf("%s: %w", o.name, err)
			}
		}
	}
	base, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return Config{}, err
	}
	if !filepath.IsAbs(c.StateDir) {
		c.StateDir = filepath.Join(base, c.StateDir)
	}
	for _, p := range []*string{&c.Istio.SidecarDeb, &c.Agent.Dir} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	if c.Fleet.Enabled == nil {
		on := c.fleetDefault()
		c.Fleet.Enabled = &on
	}
	return c, c.Validate()
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Validate checks every field and names the first problem and its fix.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Version != 1 {
		bad("version %d is not supported: this hostctl reads version 1", c.Version)
	}
	// A slice, not a map: the errors come in the same order every time.
	for _, f := range []struct{ field, v string }{
		{"workload.namespace", c.Workload.Namespace}, {"workload.serviceAccount", c.Workload.ServiceAccount},
		{"workload.group", c.Workload.Group},
	} {
		if !dnsLabel.MatchString(f.v) {
			bad("%s %q must be a DNS label (lower-case letters, digits and '-', at most 63)", f.field, f.v)
		}
	}
	switch c.Cluster.Provider {
	case SSH:
		if len(c.Cluster.Nodes) == 0 {
			bad("cluster.provider ssh needs cluster.nodes (name, address, user, key of each machine; the first is the k3s server)")
		}
		for i, n := range c.Cluster.Nodes {
			if !dnsLabel.MatchString(n.Name) || n.Address == "" || n.User == "" {
				bad("cluster.nodes[%d] %q: want a DNS-label name, an address and a user", i, n.Name)
			} else if err := sshAddress(n.Address); err != nil {
				bad("cluster.nodes[%d] (%s): %v", i, n.Name, err)
			}
		}
	case Multipass, Lab:
	case Kubeconfig:
		if c.Cluster.Kubeconfig == "" {
			bad("cluster.provider kubeconfig needs cluster.kubeconfig (or MESHVM_KUBECONFIG)")
		}
	default:
		bad("cluster.provider %q: want multipass, ssh, lab or kubeconfig", c.Cluster.Provider)
	}
	if c.Workload.Port < 1 || c.Workload.Port > 65535 {
		bad("workload.port %d is out of range 1-65535", c.Workload.Port)
	}
	if c.anyRunsApp() && c.Workload.Probe.Port != c.Workload.Port {
		bad("workload.probe.port %d is not workload.port %d, where hostctl's app serves: set workload.probe.port to %d (or set workload.app: false and serve port %d yourself)",
			c.Workload.Probe.Port, c.Workload.Port, c.Workload.Port, c.Workload.Probe.Port)
	}
	if d := c.Workload.CertificateLifetime.Duration; d != 0 && d < time.Minute {
		bad("workload.certificateLifetime %s is shorter than 1m: pilot-agent renews at half the lifetime; set 1m or more (or leave it empty for Istio's 24h)", d)
	}
	if c.Workload.TokenLifetime.Duration < 10*time.Minute {
		bad("workload.tokenLifetime %s is shorter than the API server's 10m minimum", c.Workload.TokenLifetime)
	}
	if err := sidecarMode("workload.sidecar", c.Workload.Sidecar); err != nil {
		errs = append(errs, err)
	}
	if c.Parallel < 1 {
		bad("parallel %d: want the number of VMs to work on at once, 1 or more (default %d)", c.Parallel, DefaultParallel)
	}
	switch c.Istio.Install {
	case "", InstallAuto, InstallAlways, InstallNever:
		if c.Cluster.Provider == Lab && c.Istio.Install == InstallNever {
			bad("istio.install never with cluster.provider lab: the lab's cluster has only the Istio hostctl installs; leave istio.install empty")
		}
	default:
		bad("istio.install %q: want auto (install where there is no Istio, else join it), always or never (only join an Istio of yours)", c.Istio.Install)
	}
	if a := c.Istio.IstiodAddress; a != "" {
		if _, err := netip.ParseAddr(a); err != nil {
			bad("istio.istiodAddress %q is not an IP address: give the address where VMs reach istiod's port 15012", a)
		}
	}
	if r := c.Istio.Revision; r != "" && !ValidRevision(r) {
		bad("istio.revision %q: a revision is a DNS label (lowercase letters, digits and '-', at most 63, as istioctl install --revision takes it), e.g. 1-31-0 or canary", r)
	}
	if c.Istio.MeshID == "" || c.Istio.ClusterName == "" || c.Istio.Network == "" || c.Workload.Network == "" {
		bad("istio.meshID, istio.clusterName, istio.network and workload.network must not be empty")
	}
	if len(c.VMs) == 0 {
		bad("vms is empty: list at least one VM")
	}
	machines := c.MachineProvider()
	switch {
	case machines != Lab && machines != Multipass && machines != SSH:
		bad("machines %q: want lab, multipass or ssh", c.Machines)
	case c.Cluster.Provider == Lab && machines != Lab:
		bad("machines %s with cluster.provider lab: the lab's istiod is reachable only from lab VMs; leave machines empty", machines)
	}
	seen := map[string]bool{}
	for i, vm := range c.VMs {
		if !dnsLabel.MatchString(vm.Name) {
			bad("vms[%d].name %q must be a DNS label", i, vm.Name)
		} else if machines == Multipass {
			// Checked before anything is launched, with Multipass's own rule.
			if err := multipass.ValidName(vm.Name); err != nil {
				bad("vms[%d].name: %v", i, err)
			}
		}
		if seen[vm.Name] {
			bad("vms[%d].name %q appears twice: VM names must be unique", i, vm.Name)
		}
		seen[vm.Name] = true
		if vm.Sidecar != "" {
			if err := sidecarMode(fmt.Sprintf("vms[%d].sidecar", i), vm.Sidecar); err != nil {
				errs = append(errs, err)
			}
		}
		if c.Proxyless(vm) && c.FleetMode() {
			bad("vms[%d] (%s) is proxyless, which fleet mode's controller does not keep yet: set fleet.enabled: false", i, vm.Name)
		}
		if c.Proxyless(vm) && c.RunsApp(vm) {
			bad("vms[%d] (%s) is proxyless but runs hostctl's HTTP app: a proxyless VM serves your gRPC app, which joins the mesh through pilot-agent's xDS; set app: false for it (workload.app: false for every VM)", i, vm.Name)
		}
		if machines == SSH {
			if vm.Address == "" || vm.User == "" {
				bad("vms[%d] (%s): ssh machines need address and user", i, vm.Name)
			} else if err := sshAddress(vm.Address); err != nil {
				bad("vms[%d] (%s): %v", i, vm.Name, err)
			}
		}
	}
	return errors.Join(errs...)
}

// hostName is a DNS name: labels of letters, digits and '-', dot-separated.
var hostName = regexp.MustCompile(`^(?i)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*\.?$`)

// sshAddress checks an SSH machine's address: an IP (v4 or v6) or a host
// name, with or without a port ("[v6]:port" for IPv6 with one).
func sshAddress(a string) error {
	host := a
	if h, port, err := net.SplitHostPort(a); err == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("address %q: port %q is not 1-65535", a, port)
		}
		host = h
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if len(host) > 253 || !hostName.MatchString(host) {
		return fmt.Errorf("address %q is neither an IP nor a host name: give host, host:port or [IPv6]:port", a)
	}
	return nil
}

// MachineProvider is where the VMs come from: machines, else what
// cluster.provider implies.
func (c Config) MachineProvider() Provider {
	switch {
	case c.Machines != "":
		return c.Machines
	case c.Cluster.Provider != Kubeconfig:
		return c.Cluster.Provider
	}
	for _, vm := range c.VMs {
		if vm.Address == "" {
			return Multipass
		}
	}
	return SSH
}

// Proxyless says whether vm runs pilot-agent without Envoy: vms[].sidecar,
// else workload.sidecar.
func (c Config) Proxyless(vm VM) bool {
	if vm.Sidecar != "" {
		return vm.Sidecar == SidecarProxyless
	}
	return c.Workload.Sidecar == SidecarProxyless
}

// sidecarMode checks a sidecar field.
func sidecarMode(field string, m SidecarMode) error {
	switch m {
	case SidecarEnvoy, SidecarProxyless:
		return nil
	}
	return fmt.Errorf("%s %q: want envoy (pilot-agent and Envoy, the VM's traffic captured) or proxyless (pilot-agent alone, for gRPC apps using xDS)", field, m)
}

// RunsApp says whether hostctl runs the recipe's app on vm: vms[].app, else
// workload.app.
func (c Config) RunsApp(vm VM) bool {
	if vm.App != nil {
		return *vm.App
	}
	return c.Workload.App
}

func (c Config) anyRunsApp() bool {
	for _, vm := range c.VMs {
		if c.RunsApp(vm) {
			return true
		}
	}
	return false
}

// VM returns the named VM.
func (c Config) VM(name string) (VM, error) {
	var names []string
	for _, vm := range c.VMs {
		if vm.Name == name {
			return vm, nil
		}
		names = append(names, vm.Name)
	}
	return VM{}, fmt.Errorf("no VM named %q in the config (known: %s): check the spelling or add it under vms", name, strings.Join(names, ", "))
}

// ValidRevision reports whether rev can name an Istio revision: a DNS label,
// since it becomes part of istiod-<rev>'s Service name.
func ValidRevision(rev string) bool {
	if rev == "" || len(rev) > 63 || rev[0] == '-' || rev[len(rev)-1] == '-' {
		return false
	}
	for _, r := range rev {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}
