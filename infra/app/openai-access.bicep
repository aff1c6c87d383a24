// Cognitive Services OpenAI User on the Azure OpenAI resource: inference calls with an Entra
// token, no key management. Deployed into the resource's own group (it may be an existing one).
param openAiName string
param principalId string
@allowed(['ServicePrincipal', 'User'])
param principalType string

var openAiUserRoleId = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd' // Cognitive Services OpenAI User

resource openAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: openAiName
}

resource openAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(openAi.id, principalId, openAiUserRoleId)
  scope: openAi
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', openAiUserRoleId)
    principalId: principalId
    principalType: principalType
  }
}

output endpoint string = openAi.properties.endpoint
