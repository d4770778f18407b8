// Package v1alpha1 is the MeshVM API: one object per VM that fleet mode
// keeps in the mesh, its spec what the VM should be and its status what
// the controller last saw, condition by condition.
//
// +kubebuilder:object:generate=true
// +groupName=meshvm.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API's group and version.
var GroupVersion = schema.GroupVersion{Group: "meshvm.io", Version: "v1alpha1"}

// ControllerLease is the Lease the controller's replicas elect their
// leader with: the controller names it, and fleet install grants it that
// Lease alone, so both read it here.
const ControllerLease = "meshvm-controller.meshvm.io"

// MeshVMSpec is what the VM should be.
type MeshVMSpec struct {
	// Address is where the VM's agent answers (an IPv4 or IPv6 address, or
	// a DNS name). Empty: the controller follows the address of the
	// WorkloadEntry Istio autoregisters for this VM.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="isIP(self) || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="address must be an IP address or a DNS name such as vm1.example.internal"
	Address string `json:"address,omitempty"`

	// WorkloadGroup names the WorkloadGroup, in the MeshVM's namespace,
	// that the VM joins as.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	WorkloadGroup string `json:"workloadGroup"`

	// Network is the Istio network the VM is on (default: the group's).
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Network string `json:"network,omitempty"`

	// Revision is the Istio revision the VM joins; empty for the default.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$`
	Revision string `json:"revision,omitempty"`

	// App runs meshvm's app on the VM, which the WorkloadGroup probes;
	// false when the VM runs its own.
	// +optional
	// +kubebuilder:default=true
	App *bool `json:"app,omitempty"`

	// TokenLifetime is how long each istio-token lives; the controller
	// replaces it at about half its life. The API server's floor is 10m.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10m') && duration(self) <= duration('8760h')",message="tokenLifetime must be between 10m (the API server's floor) and 8760h"
	TokenLifetime *metav1.Duration `json:"tokenLifetime,omitempty"`

	// CertificateLifetime is how long each workload certificate lives;
	// pilot-agent renews it at half its life.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m') && duration(self) <= duration('2160h')",message="certificateLifetime must be between 1m and 2160h"
	CertificateLifetime *metav1.Duration `json:"certificateLifetime,omitempty"`

	// Paused stops the controller from acting on the VM; it still reports.
	// +optional
	Paused bool `json:"paused,omitempty"`
}

// Condition types on a MeshVM; Ready summarizes the others.
const (
	ConditionReady            = "Ready"
	ConditionAgentReachable   = "AgentReachable"
	ConditionFilesInSync      = "FilesInSync"
	ConditionSidecarRunning   = "SidecarRunning"
	ConditionRegistered       = "Registered"
	ConditionHealthy          = "Healthy"
	ConditionCredentialsValid = "CredentialsValid"
	ConditionUpToDate         = "UpToDate"
)

// MeshVMStatus is what the controller last saw of the VM.
type MeshVMStatus struct {
	// ObservedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Ready and the ones behind it, each with a reason and message.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// Address is where the agent was last reached.
	// +optional
	Address string `json:"address,omitempty"`
	// Agent is the agent's state and version ("connected v0.19.0").
	// +optional
	Agent string `json:"agent,omitempty"`
	// Sidecar is the istio unit's state ("active/running").
	// +optional
	Sidecar string `json:"sidecar,omitempty"`
	// Healthy is the WorkloadEntry's Healthy condition as Istio reports it.
	// +optional
	Healthy string `json:"healthy,omitempty"`
	// Revision and ProxyVersion are what the VM's files point at.
	// +optional
	Revision string `json:"revision,omitempty"`
	// +optional
	ProxyVersion string `json:"proxyVersion,omitempty"`
	// TokenExpiresAt and CertificateNotAfter are the credentials' ends;
	// TokenRotatedAt when the controller last replaced the token.
	// +optional
	TokenExpiresAt *metav1.Time `json:"tokenExpiresAt,omitempty"`
	// +optional
	TokenRotatedAt *metav1.Time `json:"tokenRotatedAt,omitempty"`
	// +optional
	CertificateNotAfter *metav1.Time `json:"certificateNotAfter,omitempty"`
	// RenewRequest and OnboardRequest are the values of the annotations
	// meshvm.io/renew and meshvm.io/onboard last acted on: a request (a
	// new value, hostctl writes the time) is honoured once.
	// +optional
	RenewRequest string `json:"renewRequest,omitempty"`
	// +optional
	OnboardRequest string `json:"onboardRequest,omitempty"`
}

// MeshVM is one VM that fleet mode keeps in the mesh.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mvm,categories=meshvm
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Agent",type=string,JSONPath=`.status.agent`
// +kubebuilder:printcolumn:name="Sidecar",type=string,JSONPath=`.status.sidecar`
// +kubebuilder:printcolumn:name="Healthy",type=string,JSONPath=`.status.healthy`
// +kubebuilder:printcolumn:name="Token Expires",type=string,JSONPath=`.status.tokenExpiresAt`
// +kubebuilder:printcolumn:name="Revision",type=string,JSONPath=`.status.revision`
// +kubebuilder:printcolumn:name="Address",type=string,JSONPath=`.status.address`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MeshVM struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MeshVMSpec   `json:"spec"`
	Status MeshVMStatus `json:"status,omitempty"`
}

// MeshVMList is a list of MeshVMs.
//
// +kubebuilder:object:root=true
type MeshVMList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshVM `json:"items"`
}
