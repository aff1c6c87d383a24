// One Flex Consumption function app: its plan, the app, and the settings every app here shares
// (identity-based AzureWebJobsStorage, Application Insights with Entra ID). No key anywhere.
param name string
param planName string
param location string = resourceGroup().location
param tags object = {}
@description('azd service name in azure.yaml; azd deploys that project to this app.')
param serviceName string
param storageAccountName string
param deploymentStorageContainerName string
param applicationInsightsName string
param identityId string
param identityClientId string
@allowed([512, 2048, 4096])
param instanceMemoryMB int
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int
@description('App-specific settings, merged over the shared ones below.')
param appSettings object = {}

// Runtime and deployment-package shape live in JSON so static checkers read what is deployed.
var flex = loadJsonContent('flex-consumption.json').functionAppConfig

resource stg 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Flex Consumption holds one app per plan.
module plan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: '${serviceName}-plan'
  params: {
    name: planName
    location: location
    tags: tags
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
  }
}

var baseAppSettings = {
  // The host (triggers, leases, diagnostic events in Tables) and the app's own clients reach
  // Storage with the user-assigned identity; shared-key access is off on the account.
  AzureWebJobsStorage__accountName: stg.name
  AzureWebJobsStorage__blobServiceUri: stg.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: stg.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: stg.properties.primaryEndpoints.table
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // DefaultAzureCredential picks the user-assigned identity only when told its client id.
  AZURE_CLIENT_ID: identityClientId
  // The connection string only names the resource; disableLocalAuth makes ingestion need the token.
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
}

module app 'br/public:avm/res/web/site:0.15.1' = {
  name: '${serviceName}-flex-consumption'
  params: {
    kind: 'functionapp,linux'
    name: name
    location: location
    tags: union(tags, { 'azd-service-name': serviceName })
    serverFarmResourceId: plan.outputs.resourceId
    httpsOnly: true
    managedIdentities: {
      systemAssigned: false
      userAssignedResourceIds: [
        identityId
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: flex.deployment.storage.type
          value: replace(
            replace(flex.deployment.storage.value, '{blobEndpoint}', stg.properties.primaryEndpoints.blob),
            '{container}',
            deploymentStorageContainerName
          )
          authentication: union(flex.deployment.storage.authentication, {
            userAssignedIdentityResourceId: identityId
          })
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: flex.runtime
    }
    siteConfig: {
      alwaysOn: false
    }
    appSettingsKeyValuePairs: union(baseAppSettings, appSettings)
  }
}

output name string = app.outputs.name
output defaultHostname string = app.outputs.defaultHostname
