# Production: two active data centres and a DR site, the same module three
# times from one set of variables; then the Ansible inventory of all three.

module "dc1" {
  source    = "../../modules/site-openstack"
  providers = { openstack = openstack.dc1 }

  site                = "dc1"
  site_role           = "active"
  name_prefix         = var.name_prefix
  architecture        = var.sites.dc1.architecture
  images              = var.images
  components          = var.sites.dc1.components
  network_id          = var.sites.dc1.network_id
  subnet_id           = var.sites.dc1.subnet_id
  security_group_ids  = var.sites.dc1.security_group_ids
  availability_zone   = var.sites.dc1.availability_zone
  key_pair            = var.key_pair
  server_group_policy = var.server_group_policy
  user_data           = var.user_data
  metadata            = var.metadata
}

module "dc2" {
  source    = "../../modules/site-openstack"
  providers = { openstack = openstack.dc2 }

  site                = "dc2"
  site_role           = "active"
  name_prefix         = var.name_prefix
  architecture        = var.sites.dc2.architecture
  images              = var.images
  components          = var.sites.dc2.components
  network_id          = var.sites.dc2.network_id
  subnet_id           = var.sites.dc2.subnet_id
  security_group_ids  = var.sites.dc2.security_group_ids
  availability_zone   = var.sites.dc2.availability_zone
  key_pair            = var.key_pair
  server_group_policy = var.server_group_policy
  user_data           = var.user_data
  metadata            = var.metadata
}

module "dr" {
  source    = "../../modules/site-openstack"
  providers = { openstack = openstack.dr }

  site                = "dr"
  site_role           = "dr"
  name_prefix         = var.name_prefix
  architecture        = var.sites.dr.architecture
  images              = var.images
  components          = var.sites.dr.components
  network_id          = var.sites.dr.network_id
  subnet_id           = var.sites.dr.subnet_id
  security_group_ids  = var.sites.dr.security_group_ids
  availability_zone   = var.sites.dr.availability_zone
  key_pair            = var.key_pair
  server_group_policy = var.server_group_policy
  user_data           = var.user_data
  metadata            = var.metadata
}

locals {
  sites = { dc1 = module.dc1, dc2 = module.dc2, dr = module.dr }
}

module "inventory" {
  source = "../../modules/inventory"

  environment = "production"
  vars        = var.inventory_vars
  output_path = coalesce(var.inventory_path, "${path.root}/../../../inventories/production/hosts.yml")

  sites = {
    for name, site in local.sites : name => {
      role         = site.site.role
      architecture = site.site.architecture
      hosts        = site.hosts
      vars         = site.lb_vip_address == null ? {} : { tongxin_lb_vip = site.lb_vip_address }
    }
  }
}
