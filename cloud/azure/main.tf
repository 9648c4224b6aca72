# An Azure Standard Load Balancer in front of a tandem pair: clients use the
# frontend IP instead of a virtual IP; the health probe asks each node
# whether it serves the module.
#
#   terraform init && terraform apply -var resource_group=... -var location=... \
#     -var 'node_nic_ids=[...]' -var node_nsg_name=...

terraform {
  required_providers {
    azurerm = { source = "hashicorp/azurerm", version = ">= 3.0" }
  }
}

provider "azurerm" {
  features {}
}

variable "resource_group" { type = string }
variable "location" { type = string }
variable "node_nic_ids" {
  type        = list(string)
  description = "The network interfaces of node1 and node2"
}
variable "node_ip_configuration_name" {
  type    = string
  default = "internal"
}
variable "node_nsg_name" { type = string }
variable "module_name" {
  type    = string
  default = "app"
}
variable "service_port" {
  type    = number
  default = 8080
}
variable "health_port" {
  type        = number
  default     = 9453
  description = "tandem's lb_port"
}

resource "azurerm_public_ip" "tandem" {
  name                = "tandem-${var.module_name}"
  resource_group_name = var.resource_group
  location            = var.location
  allocation_method   = "Static"
  sku                 = "Standard"
}

resource "azurerm_lb" "tandem" {
  name                = "tandem-${var.module_name}"
  resource_group_name = var.resource_group
  location            = var.location
  sku                 = "Standard"

  frontend_ip_configuration {
    name                 = "frontend"
    public_ip_address_id = azurerm_public_ip.tandem.id
  }
}

resource "azurerm_lb_backend_address_pool" "tandem" {
  name            = "tandem-nodes"
  loadbalancer_id = azurerm_lb.tandem.id
}

resource "azurerm_network_interface_backend_address_pool_association" "node" {
  count                   = length(var.node_nic_ids)
  network_interface_id    = var.node_nic_ids[count.index]
  ip_configuration_name   = var.node_ip_configuration_name
  backend_address_pool_id = azurerm_lb_backend_address_pool.tandem.id
}

resource "azurerm_lb_probe" "primary" {
  name                = "tandem-primary"
  loadbalancer_id     = azurerm_lb.tandem.id
  protocol            = "Http"
  port                = var.health_port
  request_path        = "/primary/${var.module_name}"
  interval_in_seconds = 5
  number_of_probes    = 1
  probe_threshold     = 1
}

resource "azurerm_lb_rule" "service" {
  name                           = "tandem-${var.module_name}"
  loadbalancer_id                = azurerm_lb.tandem.id
  protocol                       = "Tcp"
  frontend_port                  = var.service_port
  backend_port                   = var.service_port
  frontend_ip_configuration_name = "frontend"
  backend_address_pool_ids       = [azurerm_lb_backend_address_pool.tandem.id]
  probe_id                       = azurerm_lb_probe.primary.id
  disable_outbound_snat          = true
  enable_tcp_reset               = true
}

resource "azurerm_network_security_rule" "health" {
  name                        = "tandem-health"
  resource_group_name         = var.resource_group
  network_security_group_name = var.node_nsg_name
  priority                    = 200
  direction                   = "Inbound"
  access                      = "Allow"
  protocol                    = "Tcp"
  source_address_prefix       = "AzureLoadBalancer"
  source_port_range           = "*"
  destination_address_prefix  = "*"
  destination_port_range      = tostring(var.health_port)
}

output "address" {
  value = azurerm_public_ip.tandem.ip_address
}
