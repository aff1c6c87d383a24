// Everything `azd up` creates for the image generator and its downstream sample. `azd down`
// deletes the resource group, and with it all of this.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; with the subscription and location it seeds every resource name.')
param environmentName string

@minLength(1)
@description('Primary location for all resources (one where Flex Consumption is offered).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the deploying user: gets the same data roles as the app, to run the CLI and tests against the deployment. Empty for none.')
param principalId string = ''

@description('Name of an existing Azure OpenAI resource to use. Empty: create one with a gpt-image deployment.')
param existingOpenAiName string = ''
@description('Resource group of the existing Azure OpenAI resource; empty means the one created here.')
param existingOpenAiResourceGroup string = ''
@description('Location of a new Azure OpenAI resource (gpt-image models are offered in few regions).')
param openAiLocation string = location

@description('The gpt-image deployment the app calls (AZURE_OPENAI_DEPLOYMENT).')
param openAiDeploymentName string = 'gpt-image-2'
@description('Model of the deployment (AZURE_OPENAI_MODEL); the app applies that model\'s rules.')
param openAiModel string = 'gpt-image-2'
@description('Model version for a new deployment; empty takes the model\'s default version.')
param openAiModelVersion string = ''
@description('Capacity of a new deployment (GlobalStandard units). Its requests-per-minute limit depends on the model: read it from the deployment in the portal and put it in openAiRpm.')
param openAiDeploymentCapacity int = 1
@minValue(1)
@description('The deployment\'s requests-per-minute limit (AZURE_OPENAI_RPM); the app paces calls to it.')
param openAiRpm int = 10
@description('API version of the images API (AZURE_OPENAI_API_VERSION).')
param openAiApiVersion string = '2025-04-01-preview'

@sealed()
type failoverDeployment = {
  @description('Unique name for logs and the quota blob.')
  name: string
  @description('https://<resource>.openai.azure.com; the app identity needs Cognitive Services OpenAI User there.')
  endpoint: string
  deployment: string
  @description('Lower is tried first; the primary deployment is 0.')
  @minValue(1)
  priority: int
  @minValue(1)
  rpm: int
}

@description('More deployments to fail over to, after the primary one. Entra ID only: there is no api_key_setting field, so no key is ever configured.')
param failoverDeployments failoverDeployment[] = []

// Sizing, from BENCHMARKS.md (section 4, memory; section 3, quota use):
// - In flight: Little's law, L = rate x time in system = (10 calls / 60 s) x ~245 s per 2048x2048
//   high call = ~41 calls streaming at once to keep a 10 RPM deployment busy.
// - Per instance: host.json queues batchSize 16 + newBatchThreshold 16 = up to 32 messages at
//   once, and PYTHON_THREADPOOL_THREAD_COUNT = 32 gives each its own thread (the default
//   min(32, cores + 4) would run ~6 on a small instance and leave the quota idle).
// - Streams: a request's n images run at once, so streams per instance are bounded by
//   IMAGE_MAX_STREAMS (32, set below), not by the message count: 32 streams per instance.
// - Memory: 8 streams of 3840x2160 high (the largest image) peaked 180 MiB over a 62 MiB idle
//   worker = 22.5 MiB per stream (29 MiB in a noisier run). 32 streams x 29 MiB + 62 MiB = ~1 GB,
//   plus the Functions host process: fits 2048 MB with room; 512 MB would hold ~15 streams, and
//   4096 MB would double the GB-s price for memory nothing uses.
// - Instances: ceil(41 / 32) = 2. More instances add no throughput (the deployment's RPM is the
//   limit, shared through the quota blob) but would bill more executions waiting for it.
//   Raise it with the quota: ceil(rpm x seconds per call / 60 / 32).
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 2
var pythonThreadpoolThreadCount = 32

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var processorAppName = 'func-imagegen-${resourceToken}'
var downstreamAppName = 'func-downstream-${resourceToken}'
var processorPackageContainer = 'app-package-processor-${take(resourceToken, 7)}'
var downstreamPackageContainer = 'app-package-downstream-${take(resourceToken, 7)}'
var requestsQueue = 'image-requests'
var imagesContainer = 'images'
var inputsContainer = 'inputs'
var quotaContainer = 'imagegen-quota'
var manifestSystemTopicName = 'evgt-storage-${resourceToken}'
var createOpenAi = empty(existingOpenAiName)
var openAiName = createOpenAi ? 'oai-${resourceToken}' : existingOpenAiName
var resourceGroupName = 'rg-${environmentName}'
var openAiResourceGroupName = createOpenAi || empty(existingOpenAiResourceGroup)
  ? resourceGroupName
  : existingOpenAiResourceGroup

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: resourceGroupName
  location: location
  tags: tags
}


module processorIdentity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'processorIdentity'
  scope: rg
  params: {
    name: 'id-imagegen-${resourceToken}'
    location: location
    tags: tags
  }
}

module downstreamIdentity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'downstreamIdentity'
  scope: rg
  params: {
    name: 'id-downstream-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'br/public:avm/res/storage/storage-account:0.8.3' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    skuName: 'Standard_LRS'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // Entra ID only: no account key can be used, so none can leak
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      containers: [
        { name: imagesContainer, publicAccess: 'None' }
        { name: inputsContainer, publicAccess: 'None' }
        { name: quotaContainer, publicAccess: 'None' }
        { name: processorPackageContainer, publicAccess: 'None' }
        { name: downstreamPackageContainer, publicAccess: 'None' }
      ]
    }
    queueServices: {
      queues: [
        { name: requestsQueue }
        { name: '${requestsQueue}-poison' }
      ]
    }
  }
}

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.11.1' = {
  name: 'logAnalytics'
  scope: rg
  params: {
    name: 'log-${resourceToken}'
    location: location
    tags: tags
    dataRetention: 30
  }
}

module monitoring 'br/public:avm/res/insights/component:0.6.0' = {
  name: 'applicationInsights'
  scope: rg
  params: {
    name: 'appi-${resourceToken}'
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true // ingestion needs an Entra token (Monitoring Metrics Publisher)
  }
}

module openAi 'br/public:avm/res/cognitive-services/account:0.10.2' = if (createOpenAi) {
  name: 'openAi'
  scope: rg
  params: {
    name: openAiName
    location: openAiLocation
    tags: tags
    kind: 'OpenAI'
    sku: 'S0'
    customSubDomainName: openAiName
    disableLocalAuth: true // Entra ID only, like the app
    publicNetworkAccess: 'Enabled'
    deployments: [
      {
        name: openAiDeploymentName
        model: union(
          { format: 'OpenAI', name: openAiModel },
          empty(openAiModelVersion) ? {} : { version: openAiModelVersion }
        )
        sku: {
          name: 'GlobalStandard'
          capacity: openAiDeploymentCapacity
        }
      }
    ]
  }
}

module processorOpenAiAccess 'app/openai-access.bicep' = {
  name: 'processorOpenAiAccess'
  scope: resourceGroup(openAiResourceGroupName)
  dependsOn: [rg, openAi]
  params: {
    openAiName: openAiName
    principalId: processorIdentity.outputs.principalId
    principalType: 'ServicePrincipal'
  }
}

module userOpenAiAccess 'app/openai-access.bicep' = if (!empty(principalId)) {
  name: 'userOpenAiAccess'
  scope: resourceGroup(openAiResourceGroupName)
  dependsOn: [rg, openAi]
  params: {
    openAiName: openAiName
    principalId: principalId
    principalType: 'User'
  }
}

module processorRoles 'app/rbac.bicep' = {
  name: 'processorRoles'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.name
    principalId: processorIdentity.outputs.principalId
    principalType: 'ServicePrincipal'
  }
}

module downstreamRoles 'app/rbac.bicep' = {
  name: 'downstreamRoles'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.name
    principalId: downstreamIdentity.outputs.principalId
    principalType: 'ServicePrincipal'
  }
}

module userRoles 'app/rbac.bicep' = if (!empty(principalId)) {
  name: 'userRoles'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.name
    principalId: principalId
    principalType: 'User'
  }
}

var openAiEndpoint = processorOpenAiAccess.outputs.endpoint

// Every setting shared/settings.py reads without a default worth keeping, and none with a key:
// the app authenticates to Azure OpenAI and Storage with its identity (AZURE_CLIENT_ID).
var processorAppSettings = {
  AZURE_OPENAI_ENDPOINT: openAiEndpoint
  AZURE_OPENAI_DEPLOYMENT: openAiDeploymentName
  AZURE_OPENAI_MODEL: openAiModel
  AZURE_OPENAI_API_VERSION: openAiApiVersion
  AZURE_OPENAI_RPM: string(openAiRpm)
  IMAGE_REQUESTS_QUEUE: requestsQueue
  IMAGES_CONTAINER: imagesContainer
  IMAGE_INPUT_CONTAINERS: inputsContainer
  IMAGE_QUOTA_CONTAINER: quotaContainer
  // Up to maximumInstanceCount instances draw on one quota: keep its pace in Storage, so a 429
  // seen by one pauses them all.
  IMAGE_QUOTA_SCOPE: 'shared'
  IMAGE_MAX_STREAMS: string(pythonThreadpoolThreadCount)
  PYTHON_THREADPOOL_THREAD_COUNT: string(pythonThreadpoolThreadCount)
}

// With failover, AZURE_OPENAI_DEPLOYMENTS replaces the single-deployment settings, so the
// primary deployment is its first entry.
var primaryDeployment = {
  name: openAiDeploymentName
  endpoint: openAiEndpoint
  deployment: openAiDeploymentName
  priority: 0
  rpm: openAiRpm
}
var failoverAppSettings = empty(failoverDeployments)
  ? {}
  : { AZURE_OPENAI_DEPLOYMENTS: string(concat([primaryDeployment], failoverDeployments)) }

module processor 'app/function-app.bicep' = {
  name: 'processor'
  scope: rg
  dependsOn: [processorRoles]
  params: {
    name: processorAppName
    planName: 'asp-imagegen-${resourceToken}'
    location: location
    tags: tags
    serviceName: 'processor'
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: processorPackageContainer
    applicationInsightsName: monitoring.outputs.name
    identityId: processorIdentity.outputs.resourceId
    identityClientId: processorIdentity.outputs.clientId
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    appSettings: union(processorAppSettings, failoverAppSettings)
  }
}

// The downstream sample (samples/downstream): a blob trigger on images/{id}/manifest.json with
// the Event Grid source, the only blob trigger source Flex Consumption supports.
module downstream 'app/function-app.bicep' = {
  name: 'downstream'
  scope: rg
  dependsOn: [downstreamRoles]
  params: {
    name: downstreamAppName
    planName: 'asp-downstream-${resourceToken}'
    location: location
    tags: tags
    serviceName: 'downstream'
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: downstreamPackageContainer
    applicationInsightsName: monitoring.outputs.name
    identityId: downstreamIdentity.outputs.resourceId
    identityClientId: downstreamIdentity.outputs.clientId
    // A thumbnail per image and one index line per request: light work, few at a time.
    instanceMemoryMB: 2048
    maximumInstanceCount: 2
    appSettings: {
      IMAGES_CONTAINER: imagesContainer
    }
  }
}

// The topic is created here; its subscription to the downstream app's blobs-extension webhook
// is made by infra/hooks/subscribe-downstream.sh once that app runs (it needs the system key).
module manifestTopic 'br/public:avm/res/event-grid/system-topic:0.6.1' = {
  name: 'manifestTopic'
  scope: rg
  params: {
    name: manifestSystemTopicName
    location: location
    tags: tags
    source: storage.outputs.resourceId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = processor.outputs.name
output DOWNSTREAM_FUNCTION_APP_NAME string = downstream.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.primaryBlobEndpoint
output EVENT_GRID_SYSTEM_TOPIC_NAME string = manifestSystemTopicName
output IMAGES_CONTAINER string = imagesContainer
output IMAGE_REQUESTS_QUEUE string = requestsQueue
output AZURE_OPENAI_ENDPOINT string = openAiEndpoint
output AZURE_OPENAI_DEPLOYMENT string = openAiDeploymentName
