package vmcore_test

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	istiometa "istio.io/api/meta/v1alpha1"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/host/vmcore/storetest"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	"github.com/meshvm/meshvm/pkg/mtls"
)

func TestDirStoreKeepsTheContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T, vms ...string) vmcore.Store {
		d, err := statedir.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return vmcore.DirStore{Dir: d, VMs: vms}
	})
}

// memStore keeps everything in memory, as a store on the cluster's objects
// would keep it away from the workstation: the core must work on it as is.
type memStore struct {
	ca       *mtls.CA
	mu       sync.Mutex
	vms      []string
	address  map[string]string
	joined   map[string]vmcore.Joined
	tokens   map[string][]byte
	restarts map[string]vmcore.Restart
}

func newMemStore(t *testing.T, vms ...string) *memStore {
	ca, err := mtls.NewCA("test agent CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &memStore{ca: ca, vms: vms, address: map[string]string{}, joined: map[string]vmcore.Joined{},
		tokens: map[string][]byte{}, restarts: map[string]vmcore.Restart{}}
}

func (s *memStore) AgentTLS(addr string) (*tls.Config, error) {
	cert, key, err := s.ca.IssueClient("controller", time.Hour)
	if err != nil {
		return nil, err
	}
	return mtls.ClientConfig(cert, key, s.ca.CertPEM(), addr)
}

func (s *memStore) AgentIdentity(vm string, addresses []string) (onboard.AgentIdentity, error) {
	var ips []net.IP
	for _, a := range addresses {
		ips = append(ips, net.ParseIP(a))
	}
	cert, key, err := s.ca.IssueServer(vm, []string{vm}, ips, time.Hour)
	return onboard.AgentIdentity{Cert: cert, Key: key, ClientCA: s.ca.CertPEM()}, err
}

func (s *memStore) Address(vm string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.address[vm], nil
}

func (s *memStore) SetAddress(vm, addr string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.address[vm] = addr
	return nil
}

func (s *memStore) AddressHolder(addr, except string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, vm := range s.vms {
		if vm != except && s.address[vm] == addr {
			return vm, nil
		}
	}
	return "", nil
}

func (s *memStore) Joined(vm string) (vmcore.Joined, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.joined[vm]
	return j, ok, nil
}

func (s *memStore) SetJoined(vm string, j vmcore.Joined) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.joined[vm] = j
	return nil
}

func (s *memStore) Token(vm string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens[vm], nil
}

func (s *memStore) SetFiles(vm string, f workloadfiles.Files) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[vm] = f.Token
	return nil
}

func (s *memStore) SetToken(vm string, tok []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[vm] = tok
	return nil
}

func (s *memStore) LastRestart(vm string) (vmcore.Restart, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.restarts[vm]
	return r, ok, nil
}

func (s *memStore) SetLastRestart(vm string, r vmcore.Restart) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restarts[vm] = r
	return nil
}

func TestMemoryStoreKeepsTheContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T, vms ...string) vmcore.Store { return newMemStore(t, vms...) })
}

// The core on a store that is not the state directory: a VM whose entry
// is Healthy is done, its address recorded there.
func TestReconcileOnAnotherStore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store := newMemStore(t, "vm1")
	group := workload.Spec{Namespace: "vmns", Group: "external-app"}
	ic := istiofake.NewSimpleClientset()
	we := &clientnetworking.WorkloadEntry{ObjectMeta: metav1.ObjectMeta{Name: "external-app-10.0.0.7", Namespace: group.Namespace,
		Annotations: map[string]string{"istio.io/autoRegistrationGroup": group.Group, "istio.io/connectedAt": "c1"}}}
	we.Spec.Address = "10.0.0.7"
	we.Status.Conditions = []*istiometa.IstioCondition{{Type: "Healthy", Status: "True", LastProbeTime: timestamppb.Now()}}
	if _, err := ic.NetworkingV1().WorkloadEntries(group.Namespace).Create(ctx, we, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var st vmcore.Status
	st.Address = "10.0.0.7"
	for _, c := range []vmcore.ConditionType{vmcore.Machine, vmcore.AgentReachable, vmcore.Credentials, vmcore.FilesInSync, vmcore.SidecarRunning} {
		st.Conditions.Set(vmcore.Condition{Type: c, Status: vmcore.True, ObservedGeneration: 1}, time.Now())
	}
	res, err := vmcore.Reconcile(ctx, vmcore.Spec{Name: "vm1", Generation: 1, RunsApp: true}, st, vmcore.Target{}, store,
		vmcore.Deps{Kube: workload.Clients{Kube: fake.NewClientset(), Istio: ic}, Workload: group})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Done || !res.Status.Conditions.IsTrue(vmcore.Ready) {
		t.Errorf("got done %v, conditions %+v", res.Done, res.Status.Conditions)
	}
	if a, _ := store.Address("vm1"); a != "10.0.0.7" {
		t.Errorf("address in the store: %q", a)
	}
}
